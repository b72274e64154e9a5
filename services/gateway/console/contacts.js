// The Contacts pages: the list (#/contacts?q=&tag=&consent=&segment=) with search, filters,
// paging and "select all matching, add or remove a tag" (seed 001), and one contact's page
// (#/contacts/<id>): profile, tags, consent history, events, messages and their outcomes,
// segments with why the contact is in or not.
//
// Only public /v1 routes. The filters live in the fragment's query, so a contact's page
// leads back to the same list. Tag, consent, search and paging are GET /v1/contacts's own
// filters, and "all matching" is POST /v1/contacts/tags:bulk with the same filter: the
// server applies it to every match, not only to the rows shown. Segment membership is
// segmentation's, not contacts': a segment filter reads the segment's members
// (GET /v1/segments/{id}/members) and passes their ids as the contact_ids filter (at most
// MAX_SEGMENT contacts, the bulk filter's limit; a larger segment is refused in words
// rather than cut short). Messages come from GET /v1/contacts/{id}/messages (delivery's
// ledger, newest first, a page at a time, with tracking's counts), each campaign named by
// GET /v1/campaigns/{id}, once per campaign for the page. Events still come from the
// contact's export (GET /v1/contacts/{id}/export): no other route serves segmentation's
// activity and orders for one contact. Everything from the server is shown as text (dom.js).
import { api, ApiError, pageQuery } from './api.js';
import { formatDate, formatNumber, h } from './dom.js';

const PAGE_SIZE = 50;
const ID_CHUNK = 100; // GET /v1/contacts takes at most 100 contact_id values
const MAX_SEGMENT = 10000; // the contact_ids filter of tags:bulk takes at most 10,000
const MEMBER_PAGE = 5000;
const CONSENTS = ['marketing', 'targeted_messages', 'automations'].flatMap((purpose) =>
  ['granted', 'withdrawn', 'pending', 'never_asked'].map((state) => `${purpose}:${state}`),
);
const MESSAGES_PAGE = 20;
// The message routes' statuses, in the manager's words where the API's are the ledger's.
const MESSAGE_OUTCOME = { claimed: 'handing over', deferred: 'retrying' };
const FILTER_KEYS = ['q', 'tag', 'consent', 'segment'];

let role = null;

async function managerRole() {
  if (role === null) {
    const session = await api('GET', '/v1/session');
    role = session.manager.role;
  }
  return role;
}
window.addEventListener('nudge:signed-out', () => {
  role = null;
});

function words(value) {
  return String(value).replaceAll('_', ' ');
}

function failed(error) {
  return h('p', { class: 'error', role: 'alert' }, `Could not load this: ${error.message}`);
}

function section(id, title, ...content) {
  return h(
    'section',
    { class: 'card', id, 'aria-labelledby': `${id}-title` },
    h('h2', { id: `${id}-title` }, title),
    ...content,
  );
}

function tagList(tags, label = 'tags') {
  return tags && tags.length
    ? h('ul', { class: 'tags', 'aria-label': label }, tags.map((t) => h('li', { class: 'tag' }, t)))
    : null;
}

function displayName(contact) {
  return [contact.first_name, contact.last_name].filter(Boolean).join(' ');
}

/** The field errors of a 422 put next to their field (by the name the server gives), the
 *  rest of the problem in words in `general`. */
function showProblem(error, general, fieldsByName) {
  for (const slot of Object.values(fieldsByName)) slot.textContent = '';
  const errors = (error instanceof ApiError && error.problem && error.problem.errors) || [];
  const unplaced = [];
  for (const e of errors) {
    const key = Object.keys(fieldsByName).find((name) => e.field === name || e.field.startsWith(`${name}[`) || e.field.startsWith(`${name}.`));
    if (key) fieldsByName[key].textContent = e.message;
    else unplaced.push(`${e.field}: ${e.message}`);
  }
  general.textContent = [error.message, ...unplaced].join(' ');
}

// --- the list ---------------------------------------------------------------------------

function readFilters() {
  const query = location.hash.split('?')[1] || '';
  const params = new URLSearchParams(query);
  return Object.fromEntries(FILTER_KEYS.map((k) => [k, params.get(k) || '']));
}

function writeFilters(filters) {
  const params = new URLSearchParams();
  for (const k of FILTER_KEYS) if (filters[k]) params.set(k, filters[k]);
  const query = params.toString();
  history.replaceState(null, '', `#/contacts${query ? `?${query}` : ''}`);
}

function listQuery(filters, extra) {
  const params = new URLSearchParams();
  if (filters.q) params.set('q', filters.q);
  if (filters.tag) params.append('tags_any', filters.tag);
  if (filters.consent) params.set('consent', filters.consent);
  for (const [k, v] of extra) params.append(k, v);
  return params;
}

/** The body's filter of tags:bulk that matches what the list shows. */
function bulkFilter(filters, segmentIds) {
  const filter = {};
  if (filters.q) filter.query = filters.q;
  if (filters.tag) filter.tags_any = [filters.tag];
  if (filters.consent) {
    const [purpose, state] = filters.consent.split(':');
    filter.consent = { purpose, state };
  }
  if (segmentIds) filter.contact_ids = segmentIds;
  return filter;
}

async function segmentMembers(segmentId) {
  const ids = [];
  let after = null;
  let asOf = null;
  do {
    const params = new URLSearchParams({ limit: String(MEMBER_PAGE) });
    if (after) params.set('after', after);
    if (asOf) params.set('as_of', asOf);
    const page = await api('GET', `/v1/segments/${encodeURIComponent(segmentId)}/members?${params}`);
    asOf = page.as_of;
    ids.push(...page.members.map((m) => m.contact_id));
    if (ids.length > MAX_SEGMENT) {
      throw new Error(
        `This segment has more than ${formatNumber(MAX_SEGMENT)} contacts: filter it further`
          + ' with a tag or a search from its own page instead.',
      );
    }
    after = page.next_after;
  } while (after);
  return ids;
}

/** One page of the list. Without a segment: the server's keyset page. With one: the
 *  members' ids in chunks, read until a page is full; the token is the next chunk's start. */
async function fetchPage(filters, segmentIds, token) {
  if (!segmentIds) {
    const params = listQuery(filters, [['page_size', String(PAGE_SIZE)]]);
    if (token) params.set('page_token', token);
    const page = await api('GET', `/v1/contacts?${params}`);
    return { contacts: page.contacts, next: page.next_page_token || '' };
  }
  const contacts = [];
  let start = Number(token || 0);
  while (start < segmentIds.length && contacts.length < PAGE_SIZE) {
    const chunk = segmentIds.slice(start, start + ID_CHUNK);
    const params = listQuery(filters, [
      ...chunk.map((id) => ['contact_id', id]),
      ['page_size', String(ID_CHUNK)],
    ]);
    const page = await api('GET', `/v1/contacts?${params}`);
    contacts.push(...page.contacts);
    start += ID_CHUNK;
  }
  return { contacts, next: start < segmentIds.length ? String(start) : '' };
}

function contactRow(contact) {
  const name = displayName(contact);
  const back = location.hash.split('?')[1] || '';
  return h(
    'li',
    { class: 'contact', 'data-contact-id': contact.id },
    h(
      'a',
      {
        class: 'row-title contact-link',
        href: `#/contacts/${encodeURIComponent(contact.id)}${back ? `?${back}` : ''}`,
      },
      name || contact.email,
    ),
    name ? h('p', { class: 'meta contact-email' }, contact.email) : null,
    contact.vip ? h('p', { class: 'meta' }, 'VIP') : null,
    tagList(contact.tags),
  );
}

function filterForm(filters, segments, onApply) {
  const field = (id, label, control, hint) =>
    h(
      'div',
      { class: 'field' },
      h('label', { for: id }, label),
      control,
      h('p', { class: 'field-error error', id: `${id}-error` }),
      hint || null,
    );
  const q = h('input', {
    id: 'contacts-q', type: 'search', name: 'q', value: filters.q,
    placeholder: 'e-mail or name starts with…', autocomplete: 'off', maxlength: 254,
  });
  const tag = h('input', { id: 'contacts-tag', name: 'tag', value: filters.tag, autocomplete: 'off' });
  const consent = h(
    'select',
    { id: 'contacts-consent', name: 'consent' },
    h('option', { value: '' }, 'Any consent'),
    CONSENTS.map((c) => h('option', { value: c, selected: c === filters.consent }, words(c).replace(':', ': '))),
  );
  const segment = h(
    'select',
    { id: 'contacts-segment', name: 'segment' },
    h('option', { value: '' }, 'Any segment'),
    segments.map((s) => h('option', { value: s.id, selected: s.id === filters.segment }, s.name)),
  );
  const form = h(
    'form',
    { class: 'card filters', id: 'contact-filters', role: 'search', 'aria-label': 'Find contacts' },
    field('contacts-q', 'Search', q),
    field('contacts-tag', 'Tag', tag),
    field('contacts-consent', 'Consent', consent),
    field('contacts-segment', 'Segment', segment),
    h('div', { class: 'field actions' }, h('button', { type: 'submit', class: 'primary', id: 'contacts-apply' }, 'Search')),
  );
  const apply = (event) => {
    if (event) event.preventDefault();
    onApply({ q: q.value.trim(), tag: tag.value.trim(), consent: consent.value, segment: segment.value });
  };
  form.addEventListener('submit', apply);
  consent.addEventListener('change', () => apply());
  segment.addEventListener('change', () => apply());
  return form;
}

function bulkSection(state) {
  const checkbox = h('input', { type: 'checkbox', id: 'select-all' });
  const input = h('input', { id: 'bulk-tag', name: 'tag', autocomplete: 'off', maxlength: 100 });
  const tagError = h('p', { class: 'field-error error', id: 'bulk-tag-error' });
  const result = h('p', { id: 'bulk-result', role: 'status' });
  const error = h('p', { id: 'bulk-error', class: 'error', role: 'alert' });
  const add = h('button', { type: 'button', id: 'bulk-add', class: 'primary', disabled: true }, 'Add tag to all matching');
  const remove = h('button', { type: 'button', id: 'bulk-remove', disabled: true }, 'Remove tag from all matching');
  const sync = () => {
    add.disabled = remove.disabled = !checkbox.checked;
  };
  checkbox.addEventListener('change', sync);
  const run = async (op) => {
    result.textContent = '';
    error.textContent = '';
    tagError.textContent = '';
    const tag = input.value.trim();
    if (!tag) {
      tagError.textContent = 'Enter the tag to add or remove.';
      input.focus();
      return;
    }
    if (state.segmentIds && !state.segmentIds.length) {
      // An empty contact_ids filter means no restriction: never send it for an empty segment.
      result.textContent = 'No contact matches these filters: nothing to change.';
      return;
    }
    add.disabled = remove.disabled = true;
    try {
      const answer = await api('POST', '/v1/contacts/tags:bulk', {
        filter: bulkFilter(state.filters, state.segmentIds),
        [op]: [tag],
      });
      const verb = op === 'add' ? 'now have' : 'no longer have';
      result.textContent = `${formatNumber(answer.matched)} matching contacts ${verb} the tag “${tag}”`
        + ` (${formatNumber(answer.changed)} changed).`;
      state.reload();
    } catch (failure) {
      showProblem(failure, error, { add: tagError, remove: tagError });
    } finally {
      sync();
    }
  };
  add.addEventListener('click', () => run('add'));
  remove.addEventListener('click', () => run('remove'));
  return section(
    'bulk-tags',
    'Tag every matching contact',
    h('p', { class: 'check' }, checkbox, h('label', { for: 'select-all' }, ' Select all contacts matching these filters (every page)')),
    h('div', { class: 'field' }, h('label', { for: 'bulk-tag' }, 'Tag'), input, tagError),
    h('div', { class: 'buttons' }, add, remove),
    result,
    error,
  );
}

async function renderList(main) {
  const filters = readFilters();
  const results = h('div', { id: 'contacts-results' }, h('p', { class: 'muted' }, 'Loading…'));
  const general = h('p', { class: 'error', role: 'alert', id: 'contacts-error' });
  const pager = h('div', { class: 'buttons pager' });
  main.replaceChildren(h('h1', {}, 'Contacts'), results);
  let segments = [];
  let viewer = true;
  try {
    const [list, who] = await Promise.all([api('GET', '/v1/segments'), managerRole()]);
    segments = list.segments;
    viewer = who === 'viewer';
  } catch (error) {
    main.replaceChildren(h('h1', {}, 'Contacts'), failed(error));
    return;
  }
  const state = { filters, segmentIds: null, tokens: [''], index: 0, reload: () => load() };
  const form = filterForm(filters, segments, (next) => {
    state.filters = next;
    state.segmentIds = null; // read the segment's members again: they change
    state.tokens = [''];
    state.index = 0;
    writeFilters(next);
    load();
  });
  const list = section('contacts-list', 'Matching contacts', general, results, pager);
  main.replaceChildren(
    h('h1', {}, 'Contacts'),
    form,
    viewer
      ? h('p', { class: 'muted', id: 'viewer-note' }, 'You can look at contacts; a viewer cannot change their tags.')
      : bulkSection(state),
    list,
  );
  const errorSlots = {
    'query.q': form.querySelector('#contacts-q-error'),
    'query.tags_any': form.querySelector('#contacts-tag-error'),
    'query.consent': form.querySelector('#contacts-consent-error'),
  };

  async function load() {
    general.textContent = '';
    results.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    pager.replaceChildren();
    try {
      if (state.filters.segment && state.segmentIds === null) {
        state.segmentIds = await segmentMembers(state.filters.segment);
      } else if (!state.filters.segment) state.segmentIds = null;
      const page = await fetchPage(state.filters, state.segmentIds, state.tokens[state.index]);
      for (const slot of Object.values(errorSlots)) slot.textContent = '';
      state.tokens[state.index + 1] = page.next;
      results.replaceChildren(
        page.contacts.length
          ? h('ul', { class: 'rows', id: 'contact-rows' }, page.contacts.map((c) => contactRow(c)))
          : h('p', { class: 'muted', id: 'no-contacts' }, 'No contact matches these filters.'),
      );
      pager.replaceChildren(
        h('button', {
          type: 'button', id: 'page-previous', disabled: state.index === 0,
          onclick: () => { state.index -= 1; load(); },
        }, 'Previous page'),
        h('span', { class: 'meta', id: 'page-number' }, `Page ${state.index + 1}`),
        h('button', {
          type: 'button', id: 'page-next', disabled: !page.next,
          onclick: () => { state.index += 1; load(); },
        }, 'Next page'),
      );
    } catch (error) {
      results.replaceChildren();
      showProblem(error, general, errorSlots);
    }
  }
  load();
}

// --- one contact ------------------------------------------------------------------------

function definition(pairs) {
  return h(
    'dl',
    { class: 'facts' },
    pairs
      .filter(([, value]) => value !== '' && value !== null && value !== undefined)
      .flatMap(([term, value]) => [h('dt', {}, term), h('dd', {}, String(value))]),
  );
}

function renderProfile(target, contact) {
  const name = displayName(contact);
  target.replaceChildren(
    h('h1', { id: 'contact-name' }, name || contact.email),
    definition([
      ['E-mail', contact.email],
      ['Shop id', contact.external_id],
      ['VIP', contact.vip ? 'yes' : 'no'],
      ['Score', contact.score],
      ['Signed up', formatDate(contact.signed_up_at)],
      ['Language', contact.locale],
      ['Time zone', contact.time_zone],
      ['Birthday', contact.birthday],
      ...Object.entries(contact.attributes || {}),
    ]),
    h('h2', {}, 'Tags'),
    tagList(contact.tags, 'contact tags') || h('p', { class: 'muted' }, 'No tags.'),
  );
  target.querySelector('ul.tags')?.setAttribute('id', 'contact-tags');
}

function renderConsents(target, history) {
  target.replaceChildren(
    h(
      'ul',
      { class: 'consent-now', id: 'consent-current' },
      history.current.map((c) =>
        h(
          'li',
          { class: `consent state-${c.state}` },
          h('span', { class: 'purpose' }, words(c.purpose)),
          ': ',
          h('span', { class: 'state' }, words(c.state)),
          c.since ? h('span', { class: 'meta' }, ` since ${formatDate(c.since)}`) : null,
        ),
      ),
    ),
    h('h3', {}, 'History, newest first'),
    history.records.length
      ? h(
          'ol',
          { class: 'rows', id: 'consent-history' },
          history.records.map((r) =>
            h(
              'li',
              { class: 'consent-record' },
              h('p', { class: 'row-title' }, `${words(r.purpose)}: ${words(r.status)}`),
              h('p', { class: 'meta' }, `${formatDate(r.recorded_at)} · ${words(r.source)}${r.actor ? ` · by ${r.actor}` : ''}`),
              r.wording ? h('p', { class: 'wording' }, `“${r.wording}”`) : null,
              r.ip || r.user_agent
                ? h('p', { class: 'meta' }, [r.ip, r.user_agent].filter(Boolean).join(' · '))
                : null,
            ),
          ),
        )
      : h('p', { class: 'muted', id: 'consent-history' }, 'No consent recorded.'),
  );
}

function renderEvents(events, exported) {
  const seg = exported.services.segmentation || {};
  const activity = [
    ...(seg.activity || []).map((a) => ({ at: a.at, text: `${words(a.kind)}${a.subject ? `: ${a.subject}` : ''}` })),
    ...(seg.orders || []).map((o) => ({
      at: o.placed_at,
      text: `order ${o.order_id}: ${(o.total_minor / 100).toFixed(2)} ${o.currency} (${words(o.status)})`,
    })),
  ].sort((a, b) => String(b.at).localeCompare(String(a.at)));
  events.replaceChildren(
    activity.length
      ? h('ol', { class: 'rows', id: 'contact-events' }, activity.map((e) =>
          h('li', { class: 'event' }, h('p', {}, e.text), h('p', { class: 'meta' }, formatDate(e.at)))))
      : h('p', { class: 'muted', id: 'contact-events' }, 'No events.'),
  );
  if (exported.incomplete.includes('segmentation')) {
    events.append(h('p', { class: 'error' }, 'Not shown, as segmentation did not answer in time.'));
  }
}

function counted(n, one) {
  return `${formatNumber(n)} ${one}${n === 1 ? '' : 's'}`;
}

/** A campaign's name, asked once per campaign for the page (every id at once, not one after
 *  another); null when it cannot be had, and the id is shown instead. */
function campaignNames() {
  const asked = new Map();
  return (id) => {
    if (!asked.has(id)) {
      asked.set(id, api('GET', `/v1/campaigns/${encodeURIComponent(id)}`).then((c) => c.name || null, () => null));
    }
    return asked.get(id);
  };
}

function campaignLink(id, nameOf) {
  const link = h('a', { href: `#/campaigns/${encodeURIComponent(id)}`, class: 'origin' }, `campaign ${id}`);
  nameOf(id).then((name) => {
    if (name) link.textContent = `campaign “${name}”`;
  });
  return link;
}

function messageOrigin(m, nameOf) {
  if (m.campaign_id) return campaignLink(m.campaign_id, nameOf);
  if (m.workflow_id) return h('a', { href: '#/automations', class: 'origin' }, `automation ${m.workflow_id}`);
  return h('span', { class: 'origin' }, words(m.kind === 'test' ? 'test send' : m.kind));
}

function messageRow(m, nameOf) {
  const outcome = MESSAGE_OUTCOME[m.status] || words(m.status);
  const seen = m.human_opens + m.human_clicks + m.machine_opens + m.machine_clicks
    ? `${counted(m.human_opens, 'open')}, ${counted(m.human_clicks, 'click')} by people · `
      + `${counted(m.machine_opens, 'open')}, ${counted(m.machine_clicks, 'click')} by machines`
    : 'No opens or clicks seen.';
  return h(
    'li',
    { class: 'message', 'data-message-id': m.message_id },
    h('p', {}, h('span', { class: `outcome outcome-${m.status}` }, outcome), ' · ', messageOrigin(m, nameOf)),
    h('p', { class: 'meta' }, `${formatDate(m.updated_at || m.claimed_at)}${m.detail ? ` · ${m.detail}` : ''}`),
    h('p', { class: 'meta tracking' }, seen),
  );
}

// A page of the contact's messages at a time, newest first; "More" appends the next one.
function renderMessages(target, contactId) {
  const list = h('ol', { class: 'rows', id: 'contact-messages' });
  const more = h('button', { type: 'button', id: 'contact-messages-more' }, 'More');
  const problem = h('p', { class: 'error', role: 'alert' });
  const nameOf = campaignNames();
  let token = '';
  async function next() {
    more.disabled = true;
    problem.textContent = '';
    try {
      const page = await api('GET', `/v1/contacts/${encodeURIComponent(contactId)}/messages?${pageQuery(MESSAGES_PAGE, token)}`);
      if (!token && !page.messages.length) {
        target.replaceChildren(h('p', { class: 'muted', id: 'contact-messages' }, 'No messages yet.'));
        return;
      }
      list.append(...page.messages.map((m) => messageRow(m, nameOf)));
      token = page.next_page_token;
      target.replaceChildren(list, ...(token ? [more] : []), problem);
    } catch (error) {
      if (token) problem.textContent = `Could not load more: ${error.message}`;
      else target.replaceChildren(failed(error));
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener('click', next);
  next();
}

function explanationTree(node) {
  return h(
    'li',
    { class: `rule-node ${node.held ? 'held' : 'failed'}` },
    h('span', { class: 'verdict' }, node.held ? '✓ holds' : '✗ fails'),
    ' ',
    h('span', { class: 'summary' }, node.summary),
    Object.keys(node.observed).length
      ? h('span', { class: 'meta' }, ` (${Object.entries(node.observed).map(([k, v]) => `${k} = ${v}`).join(', ')})`)
      : null,
    node.children.length ? h('ul', {}, node.children.map(explanationTree)) : null,
  );
}

function renderSegments(target, contactId, all, member) {
  const inIds = new Set(member.segments.map((s) => s.id));
  target.replaceChildren(
    h(
      'ul',
      { class: 'rows', id: 'contact-segments' },
      all.segments.map((segment) => {
        const isIn = inIds.has(segment.id);
        const why = h('div', { class: 'why' });
        const button = h('button', { type: 'button', class: 'explain' }, isIn ? 'Why in?' : 'Why not?');
        button.addEventListener('click', async () => {
          button.disabled = true;
          why.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
          try {
            const answer = await api(
              'GET',
              `/v1/segments/${encodeURIComponent(segment.id)}/explain/${encodeURIComponent(contactId)}`,
            );
            why.replaceChildren(h('ul', { class: 'explanation' }, explanationTree(answer.root)));
          } catch (error) {
            why.replaceChildren(failed(error));
          } finally {
            button.disabled = false;
          }
        });
        return h(
          'li',
          { class: `segment-row ${isIn ? 'in' : 'out'}`, 'data-segment-id': segment.id },
          h('p', {}, h('span', { class: 'row-title segment-name' }, segment.name), ' ',
            h('span', { class: 'membership' }, isIn ? 'in' : 'not in')),
          button,
          why,
        );
      }),
    ),
  );
}

function renderContact(main, contactId) {
  const back = location.hash.split('?')[1] || '';
  const profile = h('section', { class: 'card', id: 'contact-profile' }, h('p', { class: 'muted' }, 'Loading…'));
  const consents = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const events = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const messages = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const segments = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  main.replaceChildren(
    h('p', { class: 'back' }, h('a', { href: `#/contacts${back ? `?${back}` : ''}`, id: 'back-to-list' }, '← All contacts')),
    profile,
    section('contact-consents', 'Consent', consents),
    section('contact-segments-card', 'Segments', segments),
    section('contact-messages-card', 'Messages', messages),
    section('contact-events-card', 'Events', events),
  );
  const id = encodeURIComponent(contactId);
  api('GET', `/v1/contacts/${id}`)
    .then((contact) => renderProfile(profile, contact))
    .catch((error) => profile.replaceChildren(h('h1', {}, 'Contact'), failed(error)));
  api('GET', `/v1/contacts/${id}/consents`)
    .then((history) => renderConsents(consents, history))
    .catch((error) => consents.replaceChildren(failed(error)));
  Promise.all([api('GET', '/v1/segments'), api('GET', `/v1/contacts/${id}/segments`)])
    .then(([all, member]) => renderSegments(segments, contactId, all, member))
    .catch((error) => segments.replaceChildren(failed(error)));
  renderMessages(messages, contactId);
  api('GET', `/v1/contacts/${id}/export`)
    .then((exported) => renderEvents(events, exported))
    .catch((error) => events.replaceChildren(failed(error)));
}

export function renderContacts(main) {
  const path = location.hash.replace(/^#\//, '').split('?')[0];
  const [, contactId] = path.split('/');
  if (contactId) renderContact(main, decodeURIComponent(contactId));
  else renderList(main);
}
