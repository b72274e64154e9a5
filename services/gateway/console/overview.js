// The Overview: the lifecycle segments with their counts and their change over 30 days,
// the workspace's own segments, recent campaigns, active automations, and whether sending
// is suspended (and why). Each part loads on its own: one failing service blanks only its
// part. Every value from the server is rendered as text (dom.js).
import { api } from './api.js';
import { formatDate, formatNumber, h } from './dom.js';

const DAY_MS = 24 * 3600 * 1000;
const RECENT_CAMPAIGNS = 5;

function section(id, title, ...content) {
  return h(
    'section',
    { class: 'card', id, 'aria-labelledby': `${id}-title` },
    h('h2', { id: `${id}-title` }, title),
    ...content,
  );
}

function failed(error) {
  return h('p', { class: 'error' }, `Could not load this: ${error.message}`);
}

function pending() {
  return h('p', { class: 'muted' }, 'Loading…');
}

// The change is against the count segmentation kept about 30 days ago (a past `as_of`
// would see past orders but today's tags and flags: not the segment as it was then).
async function counts(segment) {
  const answer = await api('GET', `/v1/segments/${encodeURIComponent(segment.id)}/count`);
  const kept = answer.count_30_days_ago;
  return {
    now: answer.count,
    change: kept === null || kept === undefined ? null : answer.count - kept,
    since: answer.count_30_days_ago_day,
  };
}

function change(value, since) {
  if (value === null) return h('span', { class: 'change none' }, 'no count from 30 days ago yet');
  const days = since ? Math.floor((Date.now() - Date.parse(`${since}T00:00:00Z`)) / DAY_MS) : 30;
  const period = `in ${days} days`;
  if (value === 0) return h('span', { class: 'change flat' }, `no change ${period}`);
  const sign = value > 0 ? '+' : '−';
  return h(
    'span',
    { class: `change ${value > 0 ? 'up' : 'down'}` },
    `${sign}${formatNumber(Math.abs(value))} ${period}`,
  );
}

function segmentCard(segment) {
  const figure = h('p', { class: 'count' }, '…');
  const delta = h('p', { class: 'delta' });
  const card = h(
    'li',
    { class: 'segment', 'data-segment-id': segment.id },
    h('h3', { class: 'segment-name' }, segment.name),
    figure,
    delta,
  );
  counts(segment).then(
    ({ now, change: moved, since }) => {
      figure.textContent = formatNumber(now);
      delta.replaceChildren(change(moved, since));
    },
    (error) => {
      figure.textContent = '–';
      delta.replaceChildren(failed(error));
    },
  );
  return card;
}

function renderSegments(body, list) {
  const builtIn = list.segments.filter((s) => s.kind === 'built_in');
  const custom = list.segments.filter((s) => s.kind === 'custom');
  body.lifecycle.replaceChildren(
    builtIn.length
      ? h('ul', { class: 'grid' }, builtIn.map((s) => segmentCard(s)))
      : h('p', { class: 'muted' }, 'No lifecycle segments.'),
  );
  body.custom.replaceChildren(
    custom.length
      ? h('ul', { class: 'grid' }, custom.map((s) => segmentCard(s)))
      : h('p', { class: 'muted' }, 'No segments of your own yet.'),
  );
}

function renderCampaigns(target, list) {
  const recent = [...list.campaigns]
    .sort((a, b) => String(b.created_at || '').localeCompare(String(a.created_at || '')))
    .slice(0, RECENT_CAMPAIGNS);
  if (!recent.length) {
    target.replaceChildren(h('p', { class: 'muted' }, 'No campaigns yet.'));
    return;
  }
  target.replaceChildren(
    h(
      'ul',
      { class: 'rows' },
      recent.map((c) =>
        h(
          'li',
          { class: 'campaign', 'data-campaign-id': c.id },
          h('p', {}, h('a', { class: 'row-title', href: `#/campaigns/${encodeURIComponent(c.id)}` }, c.name)),
          h('p', { class: 'subject' }, c.subject),
          h(
            'p',
            { class: 'meta' },
            h('span', { class: `status status-${c.status}` }, c.status),
            c.created_at ? ` · ${formatDate(c.created_at)}` : '',
          ),
          c.tags_any && c.tags_any.length
            ? h('ul', { class: 'tags', 'aria-label': 'tags' }, c.tags_any.map((t) => h('li', {}, t)))
            : null,
        ),
      ),
    ),
  );
}

function renderWorkflows(target, list) {
  if (!list.workflows.length) {
    target.replaceChildren(h('p', { class: 'muted' }, 'No automation is switched on.'));
    return;
  }
  target.replaceChildren(
    h(
      'ul',
      { class: 'rows' },
      list.workflows.map((w) =>
        h(
          'li',
          { class: 'workflow', 'data-workflow-id': w.id },
          h('p', {}, h('a', { class: 'row-title', href: '#/automations' }, w.name)),
          h('p', { class: 'meta' }, `Starts on ${w.trigger} · version ${w.version}`),
        ),
      ),
    ),
  );
}

function renderSending(target, status) {
  if (status.suspended) {
    target.replaceChildren(
      h('p', { class: 'status-line suspended', id: 'sending-state' }, 'Sending is suspended'),
      h('p', { class: 'reason' }, status.reason),
      status.suspended_at
        ? h('p', { class: 'meta' }, `Since ${formatDate(status.suspended_at)}`)
        : null,
    );
    return;
  }
  const hours = Math.round(status.window_seconds / 3600);
  target.replaceChildren(
    h('p', { class: 'status-line ok', id: 'sending-state' }, 'Sending is active'),
    h(
      'p',
      { class: 'meta' },
      `Last ${hours} h: ${formatNumber(status.window_sent)} sent, `
        + `${formatNumber(status.window_hard_bounces)} hard bounces, `
        + `${formatNumber(status.window_complaints)} complaints`,
    ),
  );
}

function load(promise, target, render) {
  promise.then((data) => render(target, data)).catch((error) => target.replaceChildren(failed(error)));
}

export function renderOverview(main) {
  const sending = h('div', {}, pending());
  const lifecycle = h('div', {}, pending());
  const custom = h('div', {}, pending());
  const campaigns = h('div', {}, pending());
  const workflows = h('div', {}, pending());
  main.replaceChildren(
    h('h1', {}, 'Overview'),
    section('sending', 'Sending', sending),
    section('lifecycle', 'Customers by lifecycle', lifecycle),
    section('campaigns', 'Recent campaigns', campaigns),
    section('automations', 'Active automations', workflows),
    section('custom-segments', 'Your segments', custom),
  );
  load(api('GET', '/v1/sending-status'), sending, renderSending);
  api('GET', '/v1/segments')
    .then((list) => renderSegments({ lifecycle, custom }, list))
    .catch((error) => {
      lifecycle.replaceChildren(failed(error));
      custom.replaceChildren(failed(error));
    });
  load(api('GET', '/v1/campaigns?page_size=100'), campaigns, renderCampaigns);
  load(api('GET', '/v1/workflows?status=active&page_size=100'), workflows, renderWorkflows);
}
