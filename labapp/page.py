"""The page's own CSS and keyboard script (layout concerns only: no handlers, no math).

Keyboard, as in AUTOMATIC1111's web UI: Enter in the prompt runs Generate, Shift+Enter adds a new
line, Ctrl/Cmd+Enter runs Generate from any field of the Generate tab. Gradio's multi-line
Textbox does the opposite (Shift+Enter submits, Enter is a new line), so the script listens in
the capture phase, before Gradio's own handler, and stops the event there.
"""

CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.pixelated .image-frame img, .pixelated .upload-container img { width: 100%; height: 100%; object-fit: contain; }
#final-image img { image-rendering: pixelated; object-fit: contain; }
.lab-note { color: var(--body-text-color-subdued); font-size: 0.9em; }
#status { min-height: 4.2em; }  /* room for the progress text, its bar and "8/25 steps" */
.run-status { min-height: 4.2em; }
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
/* phones: as many 96 px tiles per row as fit (a 5-6 column grid would overflow 390 px); tables scroll
   sideways instead of wrapping one letter per line */
@media (max-width: 700px) {
  .pixelated .grid-wrap .grid-container { grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); }
  .prose table { display: block; overflow-x: auto; }
  .prose table td, .prose table th { white-space: nowrap; }
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
