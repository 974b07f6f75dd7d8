// Applies the saved theme before the first paint (no flash); app.js owns the toggle.
(function () {
  try {
    var saved = localStorage.getItem("angosd-theme");
    if (saved === "light" || saved === "dark") document.documentElement.dataset.theme = saved;
  } catch (e) { /* storage disabled: follow the system */ }
})();
