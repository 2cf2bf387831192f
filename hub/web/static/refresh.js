// The status page reloads itself every 30 s (hub/web/pages.py: _REFRESH_S), but never while someone is typing
// the admin token into the Sync now form: a reload would wipe it, so it looks again 5 s later.
// Without script, the page's <noscript> meta refresh reloads it instead.
(function () {
  var token = document.getElementById('token');
  function reload() {
    if (token && (token.value || document.activeElement === token)) {
      setTimeout(reload, 5000);
      return;
    }
    location.replace('/');
  }
  setTimeout(reload, 30000);
})();
