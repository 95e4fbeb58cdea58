"""One builder per tab: each lays out its tab and returns the components other tabs need."""
