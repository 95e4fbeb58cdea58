"""The page's own CSS and scripts (layout concerns only: no handlers, no math).

Keyboard, as in AUTOMATIC1111's web UI: Enter in the prompt runs Generate, Shift+Enter adds a new
line, Ctrl/Cmd+Enter runs Generate from any field of the Generate tab. Gradio's multi-line
Textbox does the opposite (Shift+Enter submits, Enter is a new line), so the script listens in
the capture phase, before Gradio's own handler, and stops the event there.

Timestep explorer: all steps' images arrive once (trace_views.explore_frames); EXPLORER_JS shows
the frame of the step slider's value on every input event, so the images follow a drag with no
request per step, and PLAY_JS walks the slider through the steps.
"""

CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.pixelated .image-frame img, .pixelated .upload-container img { width: 100%; height: 100%; object-fit: contain; }
#final-image img { image-rendering: pixelated; object-fit: contain; }
.lab-note { color: var(--body-text-color-subdued); font-size: 0.9em; }
.field-note { margin-top: -6px; }
#status { min-height: 2.6em; }  /* the run's one progress line: step k/N, t, elapsed seconds */
.run-status { min-height: 2.6em; }
/* captions outside the image: Gradio floats the label chip over the image's top-left corner, where
   "...in the top left" puts the shape; here it is a line above the image, the image below it */
.block.caption-outside { display: flex !important; flex-direction: column !important; flex-wrap: nowrap !important; }
.caption-outside > label[data-testid="block-label"] { position: static; flex: 0 0 auto; align-self: flex-start;
    max-width: calc(100% - 6.5em); margin: 0 0 4px 0; white-space: normal; height: auto; }
#xt-preview > label[data-testid="block-label"], #x0-preview > label[data-testid="block-label"] { max-width: 100%; }
/* the image's buttons (fullscreen, download) in the caption's row, right, not over the image's corner */
.caption-outside .image-container { position: static; }
.caption-outside > label[data-testid="block-label"] > span { flex: 0 0 auto; }
.caption-outside > :not(label):not([data-testid="status-tracker"]):not(.icon-button-wrapper) { flex: 1 1 auto;
    min-height: 0; }
.caption-outside .image-container, .caption-outside .image-frame, .caption-outside .image-container > button {
    height: 100%; min-height: 0; width: 100%; }
.caption-outside img { max-height: 100%; max-width: 100%; object-fit: contain; }
/* the results follow the scroll on wide screens: Generate / Stop and the live previews stay in sight together */
@media (min-width: 1024px) {
  #generate-row { align-items: flex-start; }
  #results { position: sticky; top: 8px; align-self: flex-start; }
}
/* buttons beside a field: their own height, not the row's */
.small-button { align-self: center; height: auto; }
#seed-row, #lora-chip-row, #mixer-chip-row { align-items: center; }
#lora-chip p { margin: 0; }
.lora-chip code { background: var(--color-accent-soft); border-radius: 999px; padding: 1px 8px; }
/* galleries sized to their items: no 450 px minimum, no inner scrolling, whole square tiles with the
   caption under the image (Gradio floats it, half transparent, over the image's corner) */
.pixelated .grid-wrap.fixed-height { min-height: 0; max-height: none; overflow-y: visible; }
.pixelated .grid-wrap .thumbnail-item { aspect-ratio: auto; height: auto; display: flex; flex-direction: column;
                                        overflow: visible; }
.pixelated .grid-wrap .thumbnail-item > img { aspect-ratio: 1 / 1; height: auto; image-rendering: pixelated; }
.pixelated .grid-wrap .thumbnail-item .caption-label { position: static; opacity: 1; max-width: 100%;
    white-space: normal; border: none; text-align: center; }
/* the explorer's frames: x_t and predicted x0 side by side, scaled up crisp */
.explore-frames .frame { display: flex; gap: 12px; flex-wrap: wrap; }
.explore-frames .frame[hidden] { display: none; }
.explore-frames figure { margin: 0; flex: 1 1 130px; max-width: 260px; }
.explore-frames img { width: 100%; aspect-ratio: 1 / 1; object-fit: contain; image-rendering: pixelated;
                      border-radius: var(--radius-md); background: var(--block-background-fill); }
.explore-frames figcaption { font-size: 0.85em; color: var(--body-text-color-subdued); text-align: center; }
/* tables of the page (presets, adherence) scroll sideways as a whole rather than squeezing columns */
.wide-table table, .prose table { display: block; overflow-x: auto; }
/* phones: as many 96 px tiles per row as fit (a 5-6 column grid would overflow 390 px); tables scroll
   sideways instead of wrapping one letter per line */
@media (max-width: 700px) {
  .pixelated .grid-wrap .grid-container { grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); }
  .prose table td, .prose table th { white-space: nowrap; }
  .prose table td { white-space: normal; min-width: 6em; }
  .wide-table td:nth-child(2) { min-width: 15em; }  /* the presets' descriptions: lines of words, not of letters */
  #preview-row { flex-wrap: nowrap; }
  #preview-row > * { min-width: 0 !important; }
  /* the three-panel schedule plot fits the screen (its panels side by side, scaled to the width) */
  #schedule-plot img, #schedule-plot svg, #schedule-plot canvas { max-width: 100%; height: auto; }
  #schedule-plot { overflow-x: hidden; }
  /* one trajectory row per sampler: the whole row on one line, tiles scaled down */
  .trajectories .grid-wrap .grid-container { grid-template-columns: repeat(6, minmax(0, 1fr)) !important; }
  .trajectories .grid-wrap .thumbnail-item .caption-label { font-size: 0.7em; overflow-wrap: anywhere; }
  /* chips and their buttons: the chips take the line, the buttons sit under them */
  #lora-chip-row, #mixer-chip-row { flex-wrap: wrap; }
  #lora-chip-row > *, #mixer-chip-row > * { min-width: 100% !important; }
  #lora-chip-row > .small-button, #mixer-chip-row > .small-button { min-width: 0 !important; flex: 1 1 40%; }
  #tabs .tab-container button { padding-left: 8px; padding-right: 8px; }
}
"""

KEYBOARD_JS = """
() => {
  if (window.__diffusionLabKeys) return;
  window.__diffusionLabKeys = true;
  const inPrompt = (el) => el && el.closest && el.closest('#prompt textarea, #prompt input');
  const inGenerateTab = (el) => el && el.closest && el.closest('#generate-tab');
  const runGenerate = () => {
    const button = document.querySelector('#generate-btn');
    if (button && !button.disabled) button.click();
  };
  // below the sticky-column width the results sit under the form: a run brings its previews into view
  document.addEventListener('click', (event) => {
    if (!(event.target.closest && event.target.closest('#generate-btn'))) return;
    if (!window.matchMedia('(max-width: 1023px)').matches) return;
    const previews = document.querySelector('#preview-row');
    if (previews) previews.scrollIntoView({block: 'start', behavior: 'instant'});
  }, true);
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || event.isComposing) return;
    const modifier = event.ctrlKey || event.metaKey;
    if (modifier ? inGenerateTab(event.target) : (inPrompt(event.target) && !event.shiftKey)) {
      event.preventDefault();  // no new line, and no keypress: Gradio's own Enter handler never sees it
      event.stopPropagation();
      runGenerate();
    }
  }, true);
  // Gradio's textbox submits on keypress Shift+Enter: stop it there, so the browser adds the new line
  document.addEventListener('keypress', (event) => {
    if (event.key === 'Enter' && event.shiftKey && inPrompt(event.target)) event.stopPropagation();
  }, true);
}
"""

EXPLORER_JS = """
() => {
  if (window.__diffusionLabExplorer) return;
  window.__diffusionLabExplorer = true;
  const show = (step) => {
    const box = document.querySelector('#explore-frames .explore-frames');
    if (!box || !+box.dataset.steps) return;
    const wanted = Math.max(1, Math.min(+box.dataset.steps, Math.round(+step)));
    box.querySelectorAll('.frame').forEach((frame) => { frame.hidden = +frame.dataset.step !== wanted; });
  };
  window.__diffusionLabShowStep = show;
  // every input event of the slider (its range and its number box): during a drag too, not only on release
  document.addEventListener('input', (event) => {
    if (event.target.closest && event.target.closest('#explore-step')) show(event.target.value);
  }, true);
}
"""

PLAY_JS = """
async () => {
  const range = document.querySelector('#explore-step input[type=range]');
  const box = document.querySelector('#explore-frames .explore-frames');
  const steps = box ? +box.dataset.steps : 0;
  if (!range || !steps) return [];
  const pause = Math.max(60, Math.min(250, 4000 / steps));  // a run plays in about 4 s
  for (let step = +range.value >= steps ? 1 : +range.value + 1; step <= steps; step++) {
    range.value = String(step);
    range.dispatchEvent(new Event('input', {bubbles: true}));  // Gradio's slider follows, and so do the frames
    await new Promise((resolve) => setTimeout(resolve, pause));
  }
  return [];
}
"""
