// The credential page's Copy and Download buttons: both work on the text already on the page (the key is shown once
// and never sent again). Copy uses the clipboard API, or selects the text and copies it where that API is missing
// (plain http, older browsers); Download saves the same text as car.json, made here in the browser.
(function () {
  const status = document.getElementById("credential-status");
  const say = (text) => {
    if (status) status.textContent = text;
  };
  const textOf = (button, attribute) => document.getElementById(button.getAttribute(attribute)).textContent;

  const selectAndCopy = (element) => {
    const range = document.createRange();
    range.selectNodeContents(element);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch (error) {
      copied = false;
    }
    return copied;
  };

  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const element = document.getElementById(button.dataset.copy);
      try {
        if (!navigator.clipboard) throw new Error("no clipboard API");
        await navigator.clipboard.writeText(element.textContent);
        say("Copied to the clipboard.");
      } catch (error) {
        say(selectAndCopy(element) ? "Copied to the clipboard." : "Selected: press Ctrl+C (⌘C on a Mac) to copy.");
      }
    });
  });

  document.querySelectorAll("button[data-download]").forEach((button) => {
    button.addEventListener("click", () => {
      const blob = new Blob([textOf(button, "data-download")], { type: "application/json" });
      const url = URL.createObjectURL(blob);
      const link = document.createElement("a");
      link.href = url;
      link.download = button.dataset.filename || "car.json";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
      say(`Saved as ${link.download}.`);
    });
  });
})();
