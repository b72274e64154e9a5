// The Campaigns pages: the list (#/campaigns), a new campaign (#/campaigns/new) and one
// campaign (#/campaigns/<id>). A draft is edited in place and saves itself as the manager
// types (debounced): the content check, the audience and the preview are the server's own
// answers for what was saved, so what the manager sees before sending is what sending will
// judge. Past the draft the page shows the lifecycle (pause, resume, cancel), the report
// with its charts and the call list of seed 003. Viewers see everything and change nothing
// (the gateway refuses them anyway). Every value from the server is rendered as text.
import { api, ApiError, pageQuery } from './api.js';
import { formatDate, formatNumber, h, moreButton } from './dom.js';

const SAVE_DELAY_MS = 600;
const REPORT_REFRESH_MS = 5000;
const SVG = 'http://www.w3.org/2000/svg';

const REASONS = {
  no_consent: 'no consent to targeted messages',
  consent_withdrawn: 'withdrew their consent',
  consent_pending: 'consent not yet confirmed',
  suppressed: 'suppressed (bounced, complained or unsubscribed)',
  no_email: 'no e-mail address',
  frequency_cap: 'held back by the frequency cap',
  excluded_segment: 'in an excluded segment',
  holdout: 'in the hold-out group',
  not_found: 'no longer exist',
};
const FIELD_LABELS = {
  subject: 'Subject',
  body_text: 'Text',
  body_html: 'HTML',
  body_markdown: 'Markdown',
};

// --- small helpers ----------------------------------------------------------------------

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = String(text);
  return el;
}

function section(id, title, ...content) {
  return h(
    'section',
    { class: 'card', id, 'aria-labelledby': `${id}-title` },
    h('h2', { id: `${id}-title` }, title),
    ...content,
  );
}

function failed(error) {
  return h('p', { class: 'error', role: 'alert' }, `Could not load this: ${error.message}`);
}

function percent(rate) {
  return `${(Math.round(rate * 1000) / 10).toLocaleString()} %`;
}

/** The part of a problem's field path that names our form field: `segment_ids[1]` ->
 * `segment_ids`. */
function fieldOf(path) {
  return String(path || '').split(/[.[]/)[0];
}

/** Shows a problem's field errors next to their fields (elements with data-error-for) and
 * its detail in `general`; returns nothing. */
function showProblem(container, general, error) {
  for (const slot of container.querySelectorAll('[data-error-for]')) slot.textContent = '';
  const errors = (error instanceof ApiError && error.problem && error.problem.errors) || [];
  const unplaced = [];
  for (const e of errors) {
    const slot = container.querySelector(`[data-error-for="${CSS.escape(fieldOf(e.field))}"]`);
    if (slot) slot.textContent = e.message;
    else unplaced.push(`${e.field}: ${e.message}`);
  }
  general.textContent = errors.length && !unplaced.length ? error.message : [error.message, ...unplaced].join(' ');
}

function clearProblem(container, general) {
  for (const slot of container.querySelectorAll('[data-error-for]')) slot.textContent = '';
  general.textContent = '';
}

let sessionPromise = null;
/** Who is signed in (role, e-mail): asked once per page load. */
function session() {
  if (!sessionPromise) sessionPromise = api('GET', '/v1/session').catch((e) => { sessionPromise = null; throw e; });
  return sessionPromise;
}

function segmentNames(list) {
  return Object.fromEntries(list.segments.map((s) => [s.id, s.name]));
}

/** Wall-clock `YYYY-MM-DDTHH:MM` in IANA `zone` -> the instant (a Date). Intl knows every
 * zone's offsets; two passes settle the offset around a change of daylight saving time. */
function zonedToInstant(local, zone) {
  const [date, time] = local.split('T');
  const [y, mo, d] = date.split('-').map(Number);
  const [hh, mm] = time.split(':').map(Number);
  const wanted = Date.UTC(y, mo - 1, d, hh, mm);
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: zone || 'UTC', hourCycle: 'h23', year: 'numeric', month: '2-digit',
    day: '2-digit', hour: '2-digit', minute: '2-digit',
  });
  const wallOf = (instant) => {
    const p = Object.fromEntries(parts.formatToParts(new Date(instant)).map((x) => [x.type, x.value]));
    return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour, +p.minute);
  };
  let guess = wanted;
  for (let i = 0; i < 2; i += 1) guess += wanted - wallOf(guess);
  return new Date(guess);
}

// --- the list -----------------------------------------------------------------------------

function counts(campaign, target) {
  if (campaign.status === 'draft' || campaign.status === 'scheduled') return;
  api('GET', `/v1/campaigns/${encodeURIComponent(campaign.id)}/report`).then(
    (r) => {
      target.textContent = `${formatNumber(r.sent)} sent · ${formatNumber(r.delivered)} delivered · `
        + `${formatNumber(r.opened.unique_human)} opened · ${formatNumber(r.clicked.unique_human)} clicked`;
    },
    () => { target.textContent = ''; },
  );
}

const LIST_PAGE = 25;

function campaignRow(c) {
  const figures = h('p', { class: 'meta figures' });
  counts(c, figures);
  return h(
    'li',
    { class: 'campaign-row', 'data-campaign-id': c.id },
    h('a', { class: 'row-title', href: `#/campaigns/${encodeURIComponent(c.id)}` }, c.name),
    h('p', { class: 'subject' }, c.subject),
    h(
      'p',
      { class: 'meta' },
      h('span', { class: `status status-${c.status}` }, c.status),
      c.scheduled_at && c.status === 'scheduled' ? ` · for ${formatDate(c.scheduled_at)}` : '',
      c.created_at ? ` · created ${formatDate(c.created_at)}` : '',
    ),
    figures,
  );
}

/** Newest first (the API's order), a page at a time with "More": each row asks for its
 * report, so a long history is not read all at once. */
async function renderList(main) {
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const actions = h('p', { class: 'actions' });
  main.replaceChildren(h('h1', {}, 'Campaigns'), h('section', { class: 'card wide', id: 'campaign-list' }, actions, body));
  const page = (token) => api('GET', `/v1/campaigns?${pageQuery(LIST_PAGE, token)}`);
  try {
    const [me, first] = await Promise.all([session(), page('')]);
    if (me.manager.role !== 'viewer') {
      actions.replaceChildren(h('a', { class: 'button primary', href: '#/campaigns/new', id: 'new-campaign' }, 'New campaign'));
    }
    if (!first.campaigns.length) {
      body.replaceChildren(h('p', { class: 'muted' }, 'No campaigns yet.'));
      return;
    }
    const rows = h('ul', { class: 'rows' }, first.campaigns.map(campaignRow));
    const more = moreButton('more-campaigns', 'More', first.next_page_token, page, (next) => rows.append(...next.campaigns.map(campaignRow)));
    body.replaceChildren(rows, ...more);
  } catch (error) {
    body.replaceChildren(failed(error));
  }
}

// --- the draft editor ---------------------------------------------------------------------

function field(id, label, control, hint) {
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id }, label),
    control,
    hint ? h('p', { class: 'muted' }, hint) : null,
    h('p', { class: 'error field-error', id: `${id}-error`, 'data-error-for': control.name, role: 'alert' }),
  );
}

function segmentChoices(name, legend, segments, chosen) {
  return h(
    'fieldset',
    { class: 'choices', id: `${name}-choices` },
    h('legend', {}, legend),
    h('ul', {}, segments.map((s) => h(
      'li',
      {},
      h('label', {}, h('input', {
        type: 'checkbox', name, value: s.id, checked: chosen.includes(s.id), 'data-segment-id': s.id,
      }), ' ', h('span', { class: 'segment-name' }, s.name)),
    ))),
    h('p', { class: 'error field-error', 'data-error-for': name, role: 'alert' }),
  );
}

/** The compose form. `campaign` is null for a new one. onSaved(campaign) after each save. */
function editor(campaign, segments, onSaved) {
  const c = campaign || { name: '', subject: '', body_text: '', body_html: '', body_markdown: '', segment_ids: [], exclude_segment_ids: [], tags_any: [], reply_to: '', local_time: false };
  const format = c.body_markdown ? 'markdown' : c.body_html ? 'html' : 'text';
  const name = h('input', { id: 'campaign-name', name: 'name', value: c.name, maxlength: 200 });
  const subject = h('input', { id: 'campaign-subject', name: 'subject', value: c.subject });
  const replyTo = h('input', { id: 'campaign-reply-to', name: 'reply_to', type: 'email', value: c.reply_to || '', autocomplete: 'email' });
  const tags = h('input', { id: 'campaign-tags', name: 'tags_any', value: (c.tags_any || []).join(', '), autocomplete: 'off' });
  const kind = h(
    'select',
    { id: 'campaign-format', name: 'format' },
    h('option', { value: 'text', selected: format === 'text' }, 'Text'),
    h('option', { value: 'html', selected: format === 'html' }, 'Text and HTML'),
    h('option', { value: 'markdown', selected: format === 'markdown' }, 'Markdown (both made from it)'),
  );
  const text = h('textarea', { id: 'campaign-text', name: 'body_text', rows: 6 });
  text.value = c.body_text;
  const html = h('textarea', { id: 'campaign-html', name: 'body_html', rows: 6 });
  html.value = c.body_html;
  const markdown = h('textarea', { id: 'campaign-markdown', name: 'body_markdown', rows: 6 });
  markdown.value = c.body_markdown;
  const textField = field('campaign-text', 'Text', text, 'Short is best: at most 4 lines. {{ contact.first_name | default("there") }} personalises.');
  const htmlField = field('campaign-html', 'HTML', html);
  const markdownField = field('campaign-markdown', 'Markdown', markdown, 'Short is best: at most 4 lines.');
  const include = segmentChoices('segment_ids', 'Send to (any of these segments)', segments, c.segment_ids);
  const exclude = segmentChoices('exclude_segment_ids', 'Leave out (members of these)', segments, c.exclude_segment_ids || []);
  const state = h('p', { class: 'muted', id: 'save-state', role: 'status' });
  const general = h('p', { class: 'error', id: 'compose-error', role: 'alert' });
  const form = h(
    'form',
    { class: 'compose', id: 'compose', novalidate: true },
    field('campaign-name', 'Name (for you)', name),
    field('campaign-subject', 'Subject', subject, 'Name your shop in it.'),
    field('campaign-reply-to', 'Replies go to (optional)', replyTo, 'Your address: the mail itself comes from the no-reply address, with your shop\'s name.'),
    field('campaign-format', 'Format', kind),
    textField, htmlField, markdownField,
    include,
    field('campaign-tags', 'And contacts with any of these tags', tags, 'Comma-separated, for instance spring, market. A contact both tagged and in a chosen segment gets one mail.'),
    exclude,
    state, general,
  );

  function showFormat() {
    textField.hidden = kind.value === 'markdown';
    htmlField.hidden = kind.value !== 'html';
    markdownField.hidden = kind.value !== 'markdown';
  }
  showFormat();

  function checked(group) {
    return [...group.querySelectorAll('input:checked')].map((i) => i.value);
  }
  function body() {
    const md = kind.value === 'markdown';
    return {
      name: name.value,
      subject: subject.value,
      body_text: md ? '' : text.value,
      body_html: kind.value === 'html' ? html.value : '',
      body_markdown: md ? markdown.value : '',
      segment_ids: checked(include),
      tags_any: tags.value.split(',').map((t) => t.trim()).filter(Boolean),
      exclude_segment_ids: checked(exclude),
      reply_to: replyTo.value.trim(),
    };
  }
  function ready(b) {
    return b.name.trim() && b.subject.trim() && (b.body_text.trim() || b.body_markdown.trim()) && (b.segment_ids.length || b.tags_any.length);
  }

  let id = campaign ? campaign.id : null;
  let timer = null;
  let saving = false;
  let again = false;
  if (!id) state.textContent = 'Fill in a name, a subject, a text and a segment or a tag: the draft then saves itself as you type.';

  async function save() {
    if (saving) { again = true; return; }
    const b = body();
    if (!id && !ready(b)) return;
    saving = true;
    state.textContent = 'Saving…';
    try {
      const saved = id
        ? await api('PATCH', `/v1/campaigns/${encodeURIComponent(id)}`, b)
        : await api('POST', '/v1/campaigns', b);
      if (!id) history.replaceState(null, '', `#/campaigns/${encodeURIComponent(saved.id)}`);
      id = saved.id;
      clearProblem(form, general);
      state.textContent = 'Draft saved.';
      onSaved(saved);
    } catch (error) {
      state.textContent = 'Not saved.';
      showProblem(form, general, error);
    } finally {
      saving = false;
      if (again) { again = false; save(); }
    }
  }
  function changed() {
    clearTimeout(timer);
    timer = setTimeout(save, SAVE_DELAY_MS);
  }
  form.addEventListener('input', changed);
  form.addEventListener('change', () => { showFormat(); changed(); });
  form.addEventListener('submit', (event) => { event.preventDefault(); save(); });
  return form;
}

// --- what the server says of a draft ------------------------------------------------------

function renderWarnings(target, check, audience, settings) {
  const items = check.warnings.map((w) => h(
    'li',
    { class: 'warning', 'data-code': w.code },
    FIELD_LABELS[fieldOf(w.field)] ? h('strong', {}, `${FIELD_LABELS[fieldOf(w.field)]}: `) : null,
    w.message,
  ));
  const capped = audience ? (audience.excluded.find((e) => e.reason === 'frequency_cap') || { count: 0 }).count : 0;
  if (capped && settings) {
    items.push(h(
      'li',
      { class: 'warning', 'data-code': 'frequency_cap' },
      h('strong', {}, 'Frequency cap: '),
      `${formatNumber(capped)} of this audience already got ${formatNumber(settings.frequency_cap_messages)} `
        + `message(s) in the last ${formatNumber(settings.frequency_cap_days)} days and will be left out.`,
    ));
  }
  target.replaceChildren(items.length
    ? h('ul', { class: 'warnings', id: 'warning-list' }, items)
    : h('p', { class: 'ok', id: 'no-warnings' }, 'No warnings.'));
}

function renderAudience(target, a, names) {
  const excluded = a.excluded.filter((e) => e.count > 0);
  target.replaceChildren(
    h(
      'dl',
      { class: 'figures-list' },
      h('dt', {}, 'Members'), h('dd', { id: 'audience-members' }, formatNumber(a.members)),
      h('dt', {}, 'Would be mailed'), h('dd', { id: 'audience-eligible' }, formatNumber(a.eligible)),
    ),
    excluded.length
      ? h('ul', { class: 'excluded', id: 'audience-excluded', 'aria-label': 'Left out' }, excluded.map((e) => h(
        'li', { 'data-reason': e.reason }, `${formatNumber(e.count)} left out: ${REASONS[e.reason] || e.reason}`,
      )))
      : h('p', { class: 'muted' }, 'Nobody is left out.'),
    a.sources.length > 1
      ? h('ul', { class: 'sources', id: 'audience-sources', 'aria-label': 'Overlap' }, a.sources.map((s) => h(
        'li',
        { 'data-source': s.source },
        h('span', { class: 'segment-name' }, s.source === 'tags' ? 'Tagged contacts' : (names[s.source] || s.source)),
        `: ${formatNumber(s.members)} members, ${formatNumber(s.also_in_other_sources)} also in another chosen segment (mailed once)`,
      )))
      : '',
    a.only_consented ? h('p', { class: 'muted' }, 'Only contacts who consented are mailed (workspace setting).') : '',
    a.sending_suspended
      ? h('p', { class: 'error', id: 'audience-suspended' }, `Sending is suspended: ${a.suspended_reason}`)
      : '',
    a.as_of ? h('p', { class: 'meta' }, `As of ${formatDate(a.as_of)}`) : '',
  );
}

/** The preview for a chosen contact: the first contacts to begin with, and a search (name
 * or e-mail, GET /v1/contacts?q=) to find any other among thousands. */
function previewPanel(campaignId, contacts) {
  const label = (c) => {
    const name = [c.first_name, c.last_name].filter(Boolean).join(' ');
    return name ? `${name} <${c.email}>` : c.email;
  };
  const who = h('select', { id: 'preview-contact', name: 'contact_id' });
  function fill(list) {
    const kept = who.value;
    who.replaceChildren(
      h('option', { value: '' }, 'A sample contact (every field missing)'),
      ...list.map((c) => h('option', { value: c.id }, label(c))),
    );
    if ([...who.options].some((o) => o.value === kept)) who.value = kept;
  }
  fill(contacts);
  const search = h('input', { id: 'preview-search', type: 'search', autocomplete: 'off', placeholder: 'Name or e-mail' });
  let timer = null;
  let asked = 0;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const mine = (asked += 1);
      const query = new URLSearchParams({ page_size: '20' });
      if (search.value.trim()) query.set('q', search.value.trim());
      const page = await api('GET', `/v1/contacts?${query}`).catch(() => null);
      if (page && mine === asked) fill(page.contacts);
    }, 300);
  });
  const out = h('div', { id: 'preview-output' });
  async function show() {
    try {
      const p = await api('POST', `/v1/campaigns/${encodeURIComponent(campaignId())}/preview`, { contact_id: who.value });
      out.replaceChildren(
        h('p', { class: 'meta' }, 'From: ', h('span', { id: 'preview-from' }, p.from)),
        h('p', { class: 'preview-subject', id: 'preview-subject' }, p.subject),
        h('pre', { class: 'preview-text', id: 'preview-text' }, p.body_text),
        p.body_html ? h('details', {}, h('summary', {}, 'HTML source'), h('pre', { class: 'preview-text' }, p.body_html)) : '',
      );
    } catch (error) {
      out.replaceChildren(h('p', { class: 'error', role: 'alert' }, error.message));
    }
  }
  who.addEventListener('change', show);
  return {
    element: h(
      'div', {},
      h('label', { for: 'preview-search' }, 'Find a contact'), search,
      h('label', { for: 'preview-contact' }, 'Preview for'), who, out,
    ),
    refresh: show,
  };
}

function testSendPanel(campaignId, email) {
  const to = h('input', { id: 'test-email', name: 'email', type: 'email', value: email });
  const result = h('p', { id: 'test-result', role: 'status' });
  const button = h('button', { type: 'button', id: 'test-send' }, 'Send a test');
  const error = h('p', { class: 'error field-error', 'data-error-for': 'email', role: 'alert' });
  const box = h('div', { class: 'test-send' }, h('label', { for: 'test-email' }, 'Send a test to'), to, error, button, result);
  button.addEventListener('click', async () => {
    button.disabled = true;
    result.textContent = '';
    error.textContent = '';
    try {
      await api('POST', `/v1/campaigns/${encodeURIComponent(campaignId())}/test-send`, { email: to.value });
      result.textContent = `Test sent to ${to.value}.`;
    } catch (failure) {
      showProblem(box, result, failure);
    } finally {
      button.disabled = false;
    }
  });
  return box;
}

/** Send now or later, with the consent confirmation when the audience needs it. */
function sendPanel(getCampaign, getAudience, settings, onSent) {
  const zone = settings.time_zone || 'UTC';
  const now = h('input', { type: 'radio', name: 'when', value: 'now', id: 'when-now', checked: true });
  const later = h('input', { type: 'radio', name: 'when', value: 'later', id: 'when-later' });
  const at = h('input', { type: 'datetime-local', id: 'send-at', name: 'send_at', 'aria-label': `Send at (${zone})` });
  const local = h('input', { type: 'checkbox', id: 'local-time', name: 'local_time' });
  const consentBox = h('div', { id: 'consent' });
  const confirm = h('input', { type: 'checkbox', id: 'confirm-consent' });
  const error = h('p', { class: 'error', id: 'send-error', role: 'alert' });
  const button = h('button', { type: 'button', class: 'primary', id: 'send' }, 'Send now');
  const box = h(
    'div',
    { class: 'send' },
    h('fieldset', {}, h('legend', {}, 'When'),
      h('label', {}, now, ' Now'),
      h('label', {}, later, ` At (${zone})`),
      at,
      h('p', { class: 'error field-error', 'data-error-for': 'send_at', role: 'alert' }),
      h('label', {}, local, ' At that time in each contact\'s own time zone')),
    consentBox,
    button,
    error,
  );
  function update() {
    button.textContent = later.checked ? 'Schedule' : 'Send now';
    at.disabled = !later.checked;
    local.disabled = !later.checked;
    const a = getAudience();
    if (a && a.confirmation_required) {
      const n = formatNumber(a.not_consented);
      consentBox.replaceChildren(
        h('p', { class: 'warning', id: 'consent-warning' }, a.not_consented === 1
          ? '1 contact of this audience has not consented to targeted messages.'
          : `${n} contacts of this audience have not consented to targeted messages.`),
        h('label', { for: 'confirm-consent' }, confirm, a.not_consented === 1
          ? ' I confirm sending to the 1 contact who has not consented'
          : ` I confirm sending to the ${n} contacts who have not consented`),
      );
    } else consentBox.replaceChildren();
  }
  box.addEventListener('change', update);
  button.addEventListener('click', async () => {
    clearProblem(box, error);
    const a = getAudience();
    const body = {};
    if (a && a.confirmation_required) {
      if (!confirm.checked) {
        error.textContent = a.not_consented === 1
          ? 'Confirm first: 1 contact has not consented.'
          : `Confirm first: ${formatNumber(a.not_consented)} contacts have not consented.`;
        return;
      }
      body.confirm_not_consented = a.not_consented;
    }
    if (later.checked) {
      if (!at.value) {
        box.querySelector('[data-error-for="send_at"]').textContent = 'Choose a date and time.';
        return;
      }
      body.send_at = zonedToInstant(at.value, zone).toISOString();
    }
    button.disabled = true;
    try {
      const c = getCampaign();
      if (later.checked && c.local_time !== local.checked) {
        await api('PATCH', `/v1/campaigns/${encodeURIComponent(c.id)}`, { local_time: local.checked });
      }
      onSent(await api('POST', `/v1/campaigns/${encodeURIComponent(c.id)}/send`, body));
    } catch (failure) {
      showProblem(box, error, failure);
    } finally {
      button.disabled = false;
    }
  });
  return { element: box, update };
}

async function renderDraft(main, campaign, me) {
  const [segments, settings, contacts] = await Promise.all([
    api('GET', '/v1/segments'),
    api('GET', '/v1/campaign-settings'),
    api('GET', '/v1/contacts?page_size=50').catch(() => ({ contacts: [] })),
  ]);
  const names = segmentNames(segments);
  let current = campaign;
  let audience = null;
  const warnings = h('div', { id: 'warnings-body' }, h('p', { class: 'muted' }, 'Warnings appear once the draft is saved.'));
  const audienceBody = h('div', { id: 'audience-body' }, h('p', { class: 'muted' }, 'The audience appears once the draft is saved.'));
  const preview = previewPanel(() => current.id, contacts.contacts || []);
  const send = sendPanel(() => current, () => audience, settings, (sent) => {
    history.replaceState(null, '', `#/campaigns/${encodeURIComponent(sent.id)}`);
    renderCampaign(main, sent.id);
  });
  const later = [
    section('preview', 'Preview', preview.element),
    section('test', 'Test', testSendPanel(() => current.id, me.manager.email)),
    section('sending', 'Send', send.element),
  ];
  for (const part of later) part.hidden = !campaign;

  async function refresh() {
    const id = encodeURIComponent(current.id);
    const [check, aud] = await Promise.allSettled([
      api('POST', `/v1/campaigns/${id}/content-check`),
      api('GET', `/v1/campaigns/${id}/audience`),
    ]);
    audience = aud.status === 'fulfilled' ? aud.value : null;
    if (aud.status === 'fulfilled') renderAudience(audienceBody, aud.value, names);
    else audienceBody.replaceChildren(failed(aud.reason));
    if (check.status === 'fulfilled') renderWarnings(warnings, check.value, audience, settings);
    else warnings.replaceChildren(failed(check.reason));
    send.update();
  }
  const form = editor(campaign, segments.segments, (saved) => {
    current = saved;
    for (const part of later) part.hidden = false;
    refresh();
    preview.refresh();
  });
  main.replaceChildren(
    h('p', {}, h('a', { href: '#/campaigns' }, '← Campaigns')),
    h('h1', {}, campaign ? 'Draft' : 'New campaign'),
    section('compose-card', 'Message', form),
    section('warnings', 'Warnings', h('div', { 'aria-live': 'polite' }, warnings)),
    section('audience', 'Audience', audienceBody),
    ...later,
  );
  if (campaign) {
    refresh();
    preview.refresh();
  }
}

// --- a campaign past its draft --------------------------------------------------------------

function barChart(id, title, bars) {
  const width = 320;
  const rowHeight = 26;
  const labelWidth = 120;
  const max = Math.max(1, ...bars.map((b) => b.value));
  const chart = svg('svg', {
    id, class: 'chart', role: 'img', viewBox: `0 0 ${width} ${bars.length * rowHeight + 4}`,
    'aria-labelledby': `${id}-title`,
  });
  chart.append(svg('title', { id: `${id}-title` }, title));
  bars.forEach((b, i) => {
    const y = i * rowHeight + 2;
    const length = Math.round(((width - labelWidth - 50) * b.value) / max);
    const g = svg('g', { class: `bar ${b.kind || ''}`, 'data-series': b.key, 'data-value': b.value });
    g.append(
      svg('text', { x: 0, y: y + 16, class: 'bar-label' }, b.label),
      svg('rect', { x: labelWidth, y: y + 3, width: Math.max(length, b.value ? 2 : 0), height: rowHeight - 8, rx: 2 }),
      svg('text', { x: labelWidth + length + 6, y: y + 16, class: 'bar-value' }, formatNumber(b.value)),
    );
    chart.append(g);
  });
  return h('figure', { class: 'chart-figure' }, chart, h('figcaption', {}, title));
}

const LINES = [
  { key: 'delivered', label: 'Delivered' },
  { key: 'opened_human', label: 'Opened, people' },
  { key: 'opened_machine', label: 'Opened, machines' },
  { key: 'clicked_human', label: 'Clicked, people' },
  { key: 'clicked_machine', label: 'Clicked, machines' },
];

/** Delivered, opens and clicks over time: one polyline per series (cumulative counts at
 * the end of each interval, GET .../timeline), built with DOM calls like everything else. */
function timelineChart(timeline) {
  if (!timeline.points.length) {
    return h('p', { class: 'muted', id: 'chart-timeline-empty' }, 'Nothing delivered yet: the chart over time starts with the first delivery.');
  }
  const width = 320;
  const height = 150;
  const left = 34;
  const bottom = 20;
  const top = 6;
  const points = timeline.points;
  const max = Math.max(1, ...points.map((p) => Math.max(...LINES.map((l) => p[l.key]))));
  const x = (i) => left + (points.length === 1 ? (width - left) / 2 : (i * (width - left - 6)) / (points.length - 1));
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const chart = svg('svg', {
    id: 'chart-timeline', class: 'chart timeline', role: 'img', viewBox: `0 0 ${width} ${height}`,
    'aria-labelledby': 'chart-timeline-title',
  });
  chart.append(
    svg('title', { id: 'chart-timeline-title' }, 'Delivered, opens and clicks over time'),
    svg('line', { x1: left, y1: y(0), x2: width, y2: y(0), class: 'axis' }),
    svg('text', { x: left - 4, y: y(max) + 4, class: 'axis-label', 'text-anchor': 'end' }, formatNumber(max)),
    svg('text', { x: left - 4, y: y(0) + 4, class: 'axis-label', 'text-anchor': 'end' }, '0'),
    svg('text', { x: left, y: height - 4, class: 'axis-label' }, formatDate(points[0].at)),
    svg('text', { x: width, y: height - 4, class: 'axis-label', 'text-anchor': 'end' }, formatDate(points[points.length - 1].at)),
  );
  for (const line of LINES) {
    const last = points[points.length - 1][line.key];
    chart.append(svg('polyline', {
      class: `line line-${line.key}`, 'data-series': line.key, 'data-last': last,
      points: points.map((p, i) => `${x(i).toFixed(1)},${y(p[line.key]).toFixed(1)}`).join(' '),
    }));
  }
  const legend = h('ul', { class: 'legend' }, LINES.map((l) => h(
    'li', { class: `legend-${l.key}` }, `${l.label}: ${formatNumber(points[points.length - 1][l.key])}`,
  )));
  return h('figure', { class: 'chart-figure' }, chart, legend, h('figcaption', {}, 'Over time (each contact counted once, at its first time)'));
}

function renderReport(target, r, timeline) {
  const machineOpen = r.opened.unique_machine;
  target.replaceChildren(
    h('p', { class: 'meta', id: 'report-state' }, r.final ? 'Final.' : 'Live: still changing.', r.as_of ? ` As of ${formatDate(r.as_of)}.` : ''),
    h(
      'dl',
      { class: 'figures-list' },
      h('dt', {}, 'Audience'), h('dd', { id: 'report-audience' }, formatNumber(r.audience)),
      h('dt', {}, 'Sent'), h('dd', { id: 'report-sent' }, formatNumber(r.sent)),
      h('dt', {}, 'Delivered'), h('dd', { id: 'report-delivered' }, `${formatNumber(r.delivered)} (${percent(r.delivery_rate)})`),
      h('dt', {}, 'Opened (people)'), h('dd', { id: 'report-opened' }, `${formatNumber(r.opened.unique_human)} (${percent(r.opened.unique_human_rate)})`),
      h('dt', {}, 'Clicked (people)'), h('dd', { id: 'report-clicked' }, `${formatNumber(r.clicked.unique_human)} (${percent(r.clicked.unique_human_rate)})`),
      h('dt', {}, 'Unsubscribed'), h('dd', {}, formatNumber(r.unsubscribed)),
      h('dt', {}, 'Orders'), h('dd', { id: 'report-orders' }, formatNumber(r.orders.orders)),
    ),
    barChart('chart-delivery', 'Delivery', [
      { key: 'delivered', label: 'Delivered', value: r.delivered, kind: 'good' },
      { key: 'deferred', label: 'Deferred', value: r.deferred },
      { key: 'bounced', label: 'Bounced', value: r.bounced, kind: 'bad' },
      { key: 'complained', label: 'Spam reports', value: r.complained, kind: 'bad' },
      { key: 'failed', label: 'Failed', value: r.failed, kind: 'bad' },
      { key: 'skipped', label: 'Skipped', value: r.skipped },
    ]),
    barChart('chart-engagement', 'Opens and clicks: people and machines apart', [
      { key: 'opened-human', label: 'Opened, people', value: r.opened.unique_human, kind: 'human' },
      { key: 'opened-machine', label: 'Opened, machines', value: machineOpen, kind: 'machine' },
      { key: 'clicked-human', label: 'Clicked, people', value: r.clicked.unique_human, kind: 'human' },
      { key: 'clicked-machine', label: 'Clicked, machines', value: r.clicked.unique_machine, kind: 'machine' },
    ]),
    h('p', { class: 'muted' }, 'Machines are mail scanners and privacy proxies opening on their own: they are not counted as people.'),
    timeline ? timelineChart(timeline) : '',
  );
}

function renderCallList(target, campaignId, list) {
  const csv = h('a', {
    href: `/v1/campaigns/${encodeURIComponent(campaignId)}/engaged-non-buyers.csv`,
    download: `engaged-non-buyers-${campaignId}.csv`, id: 'call-list-csv', class: 'button',
  }, 'Download CSV');
  target.replaceChildren(
    h('p', { class: 'muted' }, 'Who opened or clicked and has not ordered: worth a call.'),
    list.contacts.length
      ? h('div', { class: 'table-scroll', tabindex: 0 }, h(
        'table',
        { id: 'call-list' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'E-mail'), h('th', {}, 'Opened'), h('th', {}, 'Clicks'))),
        h('tbody', {}, list.contacts.map((c) => h(
          'tr',
          { 'data-contact-id': c.contact_id },
          h('td', {}, [c.first_name, c.last_name].filter(Boolean).join(' ')),
          h('td', { class: 'email' }, c.email),
          h('td', {}, formatDate(c.first_opened_at)),
          h('td', {}, formatNumber(c.clicks)),
        ))),
      ))
      : h('p', { class: 'muted', id: 'call-list-empty' }, 'Nobody yet.'),
    list.next_page_token ? h('p', { class: 'muted' }, 'More in the CSV.') : '',
    csv,
  );
}

function lifecycle(campaign, me, onMoved) {
  if (me.manager.role === 'viewer') return null;
  const moves = [];
  if (campaign.status === 'sending') moves.push(['pause', 'Pause']);
  if (campaign.status === 'paused') moves.push(['resume', 'Resume']);
  if (['draft', 'scheduled', 'sending', 'paused'].includes(campaign.status)) moves.push(['cancel', 'Cancel campaign']);
  if (!moves.length) return null;
  const note = h('input', { id: 'move-note', name: 'note', placeholder: 'Why (optional)' });
  const error = h('p', { class: 'error', id: 'move-error', role: 'alert' });
  const box = h('div', { class: 'moves' }, h('label', { for: 'move-note' }, 'Note'), note);
  for (const [verb, label] of moves) {
    const button = h('button', { type: 'button', id: `campaign-${verb}`, class: verb === 'cancel' ? 'danger' : '' }, label);
    button.addEventListener('click', async () => {
      if (verb === 'cancel' && !window.confirm('Cancel this campaign for good?')) return;
      button.disabled = true;
      try {
        onMoved(await api('POST', `/v1/campaigns/${encodeURIComponent(campaign.id)}/${verb}`, { note: note.value }));
      } catch (failure) {
        error.textContent = failure.message;
        button.disabled = false;
      }
    });
    box.append(button);
  }
  box.append(error);
  return box;
}

/** Who moved a campaign, in words: the transitions name "manager:<id>" for a console
 * manager, "api_key:<id>" for a key, "system:..." for Nudge itself. */
function actorWords(actor, me) {
  if (actor === `manager:${me.manager.id}`) return 'by you';
  if (actor.startsWith('manager:')) return 'by a team member';
  if (actor.startsWith('api_key:')) return `by the API key ${actor.slice('api_key:'.length)}`;
  return 'by Nudge';
}

function renderTransitions(target, list, me) {
  target.replaceChildren(h('ol', { class: 'transitions' }, list.transitions.map((t) => h(
    'li', { class: 'transition', 'data-actor': t.actor },
    `${formatDate(t.at)}: ${t.from_status} → ${t.to_status}, ${actorWords(t.actor, me)}`,
    t.note ? ` (“${t.note}”)` : '',
  ))));
}

async function renderSent(main, campaign, me) {
  const id = encodeURIComponent(campaign.id);
  const report = h('div', { id: 'report-body' }, h('p', { class: 'muted' }, 'Loading…'));
  const calls = h('div', { id: 'call-list-body' }, h('p', { class: 'muted' }, 'Loading…'));
  const history_ = h('div', {});
  const names = segmentNames(await api('GET', '/v1/segments').catch(() => ({ segments: [] })));
  main.replaceChildren(
    h('p', {}, h('a', { href: '#/campaigns' }, '← Campaigns')),
    h('h1', { id: 'campaign-title' }, campaign.name),
    section(
      'campaign-state',
      'Status',
      h('p', { class: `status status-${campaign.status}`, id: 'campaign-status' }, campaign.status),
      campaign.status_reason ? h('p', { class: 'reason' }, campaign.status_reason) : null,
      campaign.scheduled_at ? h('p', { class: 'meta' }, `Scheduled for ${formatDate(campaign.scheduled_at)}${campaign.local_time ? ' in each contact\'s time zone' : ''}`) : null,
      h('p', { class: 'subject', id: 'campaign-subject-line' }, campaign.subject),
      h('ul', { class: 'tags', 'aria-label': 'segments' }, campaign.segment_ids.map((s) => h('li', { class: 'segment-name' }, names[s] || s))),
      campaign.tags_any.length ? h('ul', { class: 'tags', 'aria-label': 'and contacts with any of these tags' }, campaign.tags_any.map((t) => h('li', { class: 'tag' }, t))) : null,
      lifecycle(campaign, me, (moved) => renderCampaign(main, moved.id)),
    ),
    section('report', 'Report', report),
    section('calls', 'Opened but did not buy', calls),
    section('history', 'History', history_),
  );
  api('GET', `/v1/campaigns/${id}/transitions`).then((t) => renderTransitions(history_, t, me), (e) => history_.replaceChildren(failed(e)));
  async function load() {
    if (!main.isConnected || !location.hash.startsWith(`#/campaigns/${id}`)) return;
    let done = false;
    try {
      const [r, timeline] = await Promise.all([
        api('GET', `/v1/campaigns/${id}/report`),
        api('GET', `/v1/campaigns/${id}/timeline`).catch(() => null),
      ]);
      renderReport(report, r, timeline);
      // Opens, clicks and orders keep coming after the last delivery (`final`): a sent
      // campaign's report stays live while it is on screen; one never started has none.
      done = ['draft', 'scheduled'].includes(campaign.status) || (campaign.status === 'cancelled' && !campaign.started_at);
    } catch (error) {
      report.replaceChildren(failed(error));
    }
    api('GET', `/v1/campaigns/${id}/engaged-non-buyers?page_size=100`).then(
      (list) => renderCallList(calls, campaign.id, list),
      (error) => calls.replaceChildren(failed(error)),
    );
    if (!done) setTimeout(load, REPORT_REFRESH_MS);
  }
  load();
}

async function renderCampaign(main, campaignId) {
  main.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  try {
    const [me, campaign] = await Promise.all([session(), api('GET', `/v1/campaigns/${encodeURIComponent(campaignId)}`)]);
    if (campaign.status === 'draft' && me.manager.role !== 'viewer') await renderDraft(main, campaign, me);
    else await renderSent(main, campaign, me);
  } catch (error) {
    main.replaceChildren(h('p', {}, h('a', { href: '#/campaigns' }, '← Campaigns')), failed(error));
  }
}

export function renderCampaigns(main) {
  const rest = location.hash.replace(/^#\/campaigns\/?/, '');
  if (!rest) {
    renderList(main);
    return;
  }
  if (rest === 'new') {
    session().then(
      (me) => (me.manager.role === 'viewer'
        ? main.replaceChildren(h('p', { class: 'error' }, 'Viewers cannot write campaigns.'))
        : renderDraft(main, null, me)),
      (error) => main.replaceChildren(failed(error)),
    ).catch((error) => main.replaceChildren(failed(error)));
    return;
  }
  renderCampaign(main, decodeURIComponent(rest));
}
