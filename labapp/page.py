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
  /* the result first: the final image and the status line above the two previews, which sit side by side */
  #results > #final-image { order: -2; }
  #results > #status { order: -1; }
  #preview-row { flex-wrap: nowrap; }
  #preview-row > * { min-width: 0 !important; }
  /* the three-panel schedule plot keeps a readable size and scrolls sideways */
  #schedule-plot { overflow-x: auto; }
  #schedule-plot img, #schedule-plot svg { min-width: 820px; }
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
