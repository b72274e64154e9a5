// The console's entry point: who is signed in (GET /v1/session), then the sign-in page or
// the signed-in shell with its page. Pages are chosen by the URL's fragment (#/overview),
// so the gateway serves one document and needs no route per page.
import { api, ApiError, setCsrfToken } from './api.js';
import { h } from './dom.js';
import { renderCampaigns } from './campaigns.js';
import { renderLogin } from './login.js';
import { renderContacts } from './contacts.js';
import { renderOverview } from './overview.js';
import { renderSegments } from './segments.js';
import { renderAutomations } from './automations.js';
import { renderSettings } from './settings.js';

const root = document.getElementById('app');
const PAGES = {
  overview: { title: 'Overview', render: renderOverview },
  contacts: { title: 'Contacts', render: renderContacts },
  segments: { title: 'Segments', render: renderSegments },
  campaigns: { title: 'Campaigns', render: renderCampaigns },
  automations: { title: 'Automations', render: renderAutomations },
  settings: { title: 'Settings', render: renderSettings },
};
let session = null;

function signedIn(answer) {
  session = answer;
  setCsrfToken(answer.csrf_token);
  if (!location.hash.startsWith('#/')) history.replaceState(null, '', '#/overview');
  show();
}

function signedOut() {
  session = null;
  setCsrfToken('');
  show();
}

async function signOut() {
  try {
    await api('DELETE', '/v1/session');
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) throw error;
  } finally {
    signedOut();
  }
}

function shell(pageName) {
  const main = h('main', { id: 'page', class: 'page' });
  const nav = h(
    'nav',
    { 'aria-label': 'Console' },
    h(
      'ul',
      {},
      Object.entries(PAGES).map(([name, page]) =>
        h(
          'li',
          {},
          h(
            'a',
            { href: `#/${name}`, 'aria-current': name === pageName ? 'page' : false },
            page.title,
          ),
        ),
      ),
    ),
  );
  const header = h(
    'header',
    { class: 'top' },
    h('p', { class: 'brand' }, 'Nudge'),
    h('p', { class: 'workspace', id: 'workspace-name' }, session.workspace.name),
    nav,
    h(
      'p',
      { class: 'who' },
      h('span', { id: 'manager-email' }, session.manager.email),
      h('span', { class: 'role' }, ` (${session.manager.role})`),
    ),
    h('button', { type: 'button', id: 'sign-out', onclick: () => signOut() }, 'Sign out'),
  );
  root.replaceChildren(header, main);
  return main;
}

function show() {
  if (!session) {
    renderLogin(root, signedIn);
    return;
  }
  // A page's own sub-paths (#/campaigns/<id>) and filters (#/contacts?tag=) stay with it:
  // the page reads them itself.
  const name = location.hash.replace(/^#\//, '').split(/[/?]/)[0] || 'overview';
  const page = PAGES[name] ? name : 'overview';
  document.title = `${PAGES[page].title} · Nudge`;
  PAGES[page].render(shell(page));
}

async function start() {
  try {
    signedIn(await api('GET', '/v1/session'));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) signedOut();
    else root.replaceChildren(h('main', { class: 'center' }, h('p', { class: 'error' }, error.message)));
  }
}

window.addEventListener('hashchange', () => session && show());
window.addEventListener('nudge:signed-out', () => session && signedOut());
start();
