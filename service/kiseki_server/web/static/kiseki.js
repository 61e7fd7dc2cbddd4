// kiseki run browser: the little that needs a script. Every page works without it.
"use strict";

// x axis of the charts: flip a whole section between step and time without a reload.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a[data-x]");
  const section = link && link.closest(".charts");
  if (!section) return;
  event.preventDefault();
  section.dataset.x = link.dataset.x;
  for (const other of section.querySelectorAll("a[data-x]")) {
    if (other === link) other.setAttribute("aria-current", "true");
    else other.removeAttribute("aria-current");
  }
  const url = new URL(window.location.href);
  url.searchParams.set("x", link.dataset.x);
  history.replaceState(null, "", url);
});

// Column chooser: find keys as you type, check all or none of the visible ones.
for (const chooser of document.querySelectorAll("[data-chooser]")) {
  const find = chooser.querySelector("input[type=search]");
  find.hidden = false;
  find.addEventListener("input", () => {
    const needle = find.value.toLowerCase();
    for (const label of chooser.querySelectorAll("label[data-key]")) {
      label.hidden = !label.dataset.key.toLowerCase().includes(needle);
    }
  });
  for (const button of chooser.querySelectorAll("button[data-check]")) {
    button.hidden = false;
    button.addEventListener("click", () => {
      const fieldset = button.closest("fieldset");
      for (const label of fieldset.querySelectorAll("label[data-key]")) {
        if (!label.hidden) label.querySelector("input").checked = button.dataset.check === "all";
      }
    });
  }
}

// Compare button: say how many runs are picked; two are needed.
const compare = document.querySelector("[data-compare]");
if (compare) {
  const boxes = document.querySelectorAll('input[form="compare-form"][name="runs"]');
  const update = () => {
    const picked = Array.from(boxes).filter((box) => box.checked).length;
    compare.disabled = picked < 2;
    compare.textContent = picked ? `Compare ${picked} run${picked > 1 ? "s" : ""}` : "Compare selected runs";
  };
  for (const box of boxes) box.addEventListener("change", update);
  update();
}
