// Click a UID to copy all of it (the page shows it shortened in the middle).
document.addEventListener("click", (event) => {
  const uid = event.target.closest(".uid[data-uid]");
  if (!uid || !navigator.clipboard || event.target.closest("a")) return;  // links navigate
  navigator.clipboard.writeText(uid.dataset.uid).then(() => {
    uid.classList.add("copied");
    setTimeout(() => uid.classList.remove("copied"), 800);
  });
});
