// flexforge review pages: filters and a lightbox. No dependencies; works from file://.
(() => {
  "use strict";
  const main = document.getElementById("cards");
  const originals = Array.from(main.querySelectorAll(":scope > .card"));
  const text = new Map(originals.map((c) => [c, c.textContent.toLowerCase()]));
  const selects = Array.from(document.querySelectorAll("select[data-filter]"));
  const search = document.getElementById("f-text");
  const count = document.getElementById("f-count");
  const none = document.getElementById("f-none");
  const group = document.getElementById("f-group"); // the gallery's "Group by"

  // A card's values for a filter or grouping: its tags, else one attribute ("" when absent).
  function values(card, name) {
    const have = card.getAttribute(`data-${name}`) || "";
    return name === "tags" ? have.split(" ").filter(Boolean) : [have];
  }

  function matches(card) {
    for (const select of selects) {
      const want = select.value;
      if (want && !values(card, select.dataset.filter).includes(want)) return false;
    }
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const body = text.get(card.original || card);
    return words.every((w) => body.includes(w));
  }

  function apply() {
    const shown = new Set();
    for (const card of main.querySelectorAll(":scope > .card")) {
      const ok = matches(card);
      card.hidden = !ok;
      if (ok) shown.add(card.dataset.id);
    }
    for (const head of main.querySelectorAll(":scope > .group-head")) {
      let next = head.nextElementSibling;
      let any = false;
      for (; next && !next.classList.contains("group-head"); next = next.nextElementSibling) {
        any = any || !next.hidden;
      }
      head.hidden = !any;
    }
    count.textContent = `${shown.size} of ${originals.length} shown`;
    none.hidden = shown.size !== 0;
  }

  // Grouping puts a heading before each value's cards; a card with several tags appears under
  // each (a copy without an id, so links still go to the first).
  function regroup() {
    for (const el of main.querySelectorAll(":scope > .group-head, :scope > .card.copy")) el.remove();
    const name = group ? group.value : "";
    if (!name) {
      for (const card of originals) main.appendChild(card);
      return;
    }
    const label = group.selectedOptions[0].dataset.label;
    const groups = new Map();
    for (const card of originals) {
      const keys = values(card, name);
      (keys.length ? keys : [""]).forEach((key, i) => {
        let copy = card;
        if (i > 0) {
          copy = card.cloneNode(true);
          copy.removeAttribute("id");
          copy.classList.add("copy");
          copy.original = card;
        }
        if (!groups.has(key)) groups.set(key, []);
        groups.get(key).push(copy);
      });
    }
    const keys = Array.from(groups.keys()).sort((a, b) => (a === "") - (b === "") || a.localeCompare(b));
    for (const key of keys) {
      const head = document.createElement("h2");
      head.className = "group-head";
      head.dataset.group = key;
      head.textContent = key ? `${label}: ${key}` : `no ${label}`;
      main.appendChild(head);
      for (const card of groups.get(key)) main.appendChild(card);
    }
  }

  for (const el of [...selects, search]) el.addEventListener("input", apply);
  if (group) {
    group.addEventListener("input", () => {
      regroup();
      apply();
    });
  }
  apply();

  const box = document.getElementById("lightbox");
  const big = box.querySelector("img");
  const caption = box.querySelector("figcaption");
  let current = -1;

  // Arrow keys step through the main pictures; a variant opens on its own.
  const visibleZooms = () =>
    Array.from(document.querySelectorAll("#cards > .card:not([hidden]) a.zoom:not(.variant)"));

  function open(link) {
    big.src = link.getAttribute("href");
    big.alt = link.dataset.caption || "";
    caption.textContent = link.dataset.caption || "";
    if (!box.open) box.showModal();
  }

  function show(index) {
    const zooms = visibleZooms();
    if (!zooms.length) return;
    current = (index + zooms.length) % zooms.length;
    open(zooms[current]);
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest("a.zoom");
    if (!link) return;
    event.preventDefault();
    const index = visibleZooms().indexOf(link);
    if (index >= 0) show(index);
    else open(link);
  });
  box.addEventListener("click", (event) => {
    const go = event.target.closest("button[data-go]");
    if (go) {
      const step = Number(go.dataset.go);
      if (step === 0) box.close();
      else show(current + step);
    } else if (event.target === box) {
      box.close();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (!box.open) return;
    if (event.key === "ArrowRight") show(current + 1);
    if (event.key === "ArrowLeft") show(current - 1);
  });
})();
