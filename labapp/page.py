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
#status { min-height: 2.6em; }
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
"""

KEYBOARD_JS = """
() => {
  if (window.__diffusionLabKeys) return;
  window.__diffusionLabKeys = true;
  document.addEventListener('keydown', (event) => {
    if (event.key !== 'Enter' || event.isComposing) return;
    const field = event.target;
    const inPrompt = field && field.closest && field.closest('#prompt textarea, #prompt input');
    const inGenerateTab = field && field.closest && field.closest('#generate-tab');
    const run = (event.ctrlKey || event.metaKey) ? inGenerateTab : (inPrompt && !event.shiftKey);
    if (inPrompt && event.shiftKey && !(event.ctrlKey || event.metaKey)) {
      event.stopPropagation();  // Shift+Enter: a new line (the browser's default), not Gradio's submit
      return;
    }
    if (!run) return;
    event.preventDefault();
    event.stopPropagation();
    const button = document.querySelector('#generate-btn');
    if (button && !button.disabled) button.click();
  }, true);
}
"""
