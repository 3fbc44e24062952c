// flexforge review pages: filters and a lightbox. No dependencies; works from file://.
(() => {
  "use strict";
  const cards = Array.from(document.querySelectorAll("#cards > .card"));
  const text = new Map(cards.map((c) => [c, c.textContent.toLowerCase()]));
  const selects = Array.from(document.querySelectorAll("select[data-filter]"));
  const search = document.getElementById("f-text");
  const count = document.getElementById("f-count");
  const none = document.getElementById("f-none");

  function matches(card) {
    for (const select of selects) {
      const want = select.value;
      if (!want) continue;
      const have = card.dataset[select.dataset.filter] || "";
      const values = select.dataset.filter === "tags" ? have.split(" ") : [have];
      if (!values.includes(want)) return false;
    }
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const body = text.get(card);
    return words.every((w) => body.includes(w));
  }

  function apply() {
    let shown = 0;
    for (const card of cards) {
      const ok = matches(card);
      card.hidden = !ok;
      if (ok) shown += 1;
    }
    count.textContent = `${shown} of ${cards.length} shown`;
    none.hidden = shown !== 0;
  }

  for (const el of [...selects, search]) el.addEventListener("input", apply);
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
