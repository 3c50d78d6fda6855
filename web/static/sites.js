// The snippets of the site owners' page name this server: SERVER in them becomes the address the page was
// loaded from (https://SERVER the origin, wss://SERVER its WebSocket origin), so that they can be copied as
// they are.
(() => {
  const origin = location.origin;
  const socket = origin.replace(/^http/, 'ws');
  for (const code of document.querySelectorAll('code')) {
    if (!code.textContent.includes('SERVER')) continue;
    code.textContent = code.textContent
      .replaceAll('https://SERVER', origin)
      .replaceAll('wss://SERVER', socket)
      .replaceAll('SERVER', location.host);
  }
  for (const note of document.querySelectorAll('[data-when-named]')) note.hidden = true;
})();
