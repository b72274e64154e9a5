// Segments: the built-in and custom segments with their counts, a preview of a segment's
// first members, deleting a custom one, and a rule builder: conditions combined by "all" or
// "any", producing the rule JSON of docs/segment-rules.md, counted and previewed live (POST
// /v1/segments:preview, debounced: the number and the first few it picks) and saved as a
// custom segment, or loaded with a custom segment's rule to change it (PATCH with If-Match:
// a change someone else made meanwhile is said, never overwritten; a rule the builder cannot
// show is shown read-only instead of losing parts). A viewer sees everything
// with the changing controls disabled: the gateway refuses their unsafe requests anyway.
// Every value from the server is rendered as text (dom.js).
import { api, ApiError } from './api.js';
import { formatDate, formatNumber, h } from './dom.js';

const COUNT_DELAY_MS = 400;
const PREVIEW_SIZE = 20;
const SAMPLE_SIZE = 5; // the rule builder's live preview

// The builder's vocabulary: a subset of services/segmentation/domain/rules.py (FIELDS, OPS).
const FIELDS = {
  email: 'string', first_name: 'string', last_name: 'string', vip: 'boolean', score: 'number',
  suppressed: 'boolean', signed_up_at: 'time', created_at: 'time', orders: 'number',
  first_order_at: 'time', last_order_at: 'time', total_spent: 'number',
  average_order_value: 'number', last_visit_at: 'time', last_open_at: 'time',
  last_click_at: 'time', cart_value: 'number', cart_items: 'number', cart_updated_at: 'time',
};
const CURRENCY_FIELDS = new Set(['total_spent', 'average_order_value', 'cart_value']);
const OPS = {
  number: ['eq', 'ne', 'lt', 'lte', 'gt', 'gte', 'exists', 'not_exists'],
  string: ['eq', 'ne', 'ci_eq', 'contains', 'ci_contains', 'starts_with', 'exists', 'not_exists'],
  boolean: ['eq', 'exists', 'not_exists'],
  time: ['gte', 'lt', 'exists', 'not_exists'],
};
const OP_WORDS = {
  eq: 'is', ne: 'is not', lt: 'less than', lte: 'at most', gt: 'more than', gte: 'at least',
  ci_eq: 'is (any case)', contains: 'contains', ci_contains: 'contains (any case)',
  starts_with: 'starts with', exists: 'is set', not_exists: 'is not set',
};
const TIME_OP_WORDS = { gte: 'within the last … days', lt: 'more than … days ago' };
const KINDS = {
  field: 'Profile field',
  tag: 'Has tag',
  no_tag: 'Has not tag',
  segment: 'In segment',
  consent: 'Consented to',
  orders: 'Ordered in the last … days',
};
const CONSENTS = ['marketing', 'targeted_messages', 'automations', 'transactional'];

function section(id, title, ...content) {
  return h(
    'section',
    { class: 'card', id, 'aria-labelledby': `${id}-title` },
    h('h2', { id: `${id}-title` }, title),
    ...content,
  );
}

function failed(error) {
  return h('p', { class: 'error', role: 'alert' }, error.message);
}

function select(options, value, onChange, props = {}) {
  const el = h(
    'select',
    { ...props, onchange: (event) => onChange(event.target.value) },
    Object.entries(options).map(([key, label]) => h('option', { value: key }, label)),
  );
  el.value = value;
  return el;
}

function labelled(text, control) {
  return h('label', { class: 'inline' }, h('span', { class: 'muted' }, text), control);
}

// --- conditions <-> rule nodes ---------------------------------------------------------------

function newCondition() {
  return { kind: 'field', field: 'orders', op: 'gte', value: '1', currency: 'EUR' };
}

function number(text) {
  const value = Number(text);
  return text !== '' && Number.isFinite(value) ? value : text;
}

/** One condition as a rule node. Malformed input goes through as typed: the server's
 *  validation names what is wrong, at its path. */
function node(c) {
  switch (c.kind) {
    case 'tag':
      return { tag: c.value };
    case 'no_tag':
      return { not: { tag: c.value } };
    case 'segment':
      return { segment: c.value };
    case 'consent':
      return { consent: c.value || 'marketing' };
    case 'orders':
      return {
        events: 'order',
        within: { days: number(c.days) },
        count: { op: 'gte', value: number(c.value) },
      };
    default: {
      const type = FIELDS[c.field];
      const out = { field: c.field, op: c.op };
      if (CURRENCY_FIELDS.has(c.field)) out.currency = c.currency;
      if (c.op === 'exists' || c.op === 'not_exists') return out;
      if (type === 'number') out.value = number(c.value);
      else if (type === 'boolean') out.value = c.value === 'true';
      else if (type === 'time') out.value = { ago: { days: number(c.value) } };
      else out.value = c.value;
      return out;
    }
  }
}

function rule(conditions, combinator) {
  if (!conditions.length) return null;
  if (conditions.length === 1) return node(conditions[0]);
  return { [combinator]: conditions.map(node) };
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function typed(value) {
  return value === undefined || value === null ? '' : String(value);
}

/** JSON text with the keys sorted: the server stores rules normalized, keys in order. */
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (isObject(value)) {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** The condition node() would build n from, or null when n is no node the builder makes. */
function guessCondition(n) {
  if (!isObject(n)) return null;
  const base = newCondition();
  if ('tag' in n) return { ...base, kind: 'tag', value: typed(n.tag) };
  if (isObject(n.not) && 'tag' in n.not) return { ...base, kind: 'no_tag', value: typed(n.not.tag) };
  if ('segment' in n) return { ...base, kind: 'segment', value: typed(n.segment) };
  if ('consent' in n) return { ...base, kind: 'consent', value: typed(n.consent) };
  if (n.events === 'order') {
    return { ...base, kind: 'orders', value: typed(n.count?.value), days: typed(n.within?.days) };
  }
  const type = FIELDS[n.field];
  if (!type || !OPS[type].includes(n.op)) return null;
  const value = type === 'time' ? n.value?.ago?.days : n.value;
  return { kind: 'field', field: n.field, op: n.op, value: typed(value), currency: typed(n.currency ?? 'EUR') };
}

/** The inverse of rule(): {combinator, conditions} for a saved rule, or null when the
 *  builder cannot show all of it. Each guess is checked by building its node again and
 *  comparing: a rule with anything the conditions cannot hold (a nested "any", months, an
 *  attribute, an event's "where") is refused rather than shown with parts silently lost. */
function conditionsOf(saved) {
  const keys = isObject(saved) ? Object.keys(saved) : [];
  const combined = keys.length === 1 && ['all', 'any'].includes(keys[0]) && Array.isArray(saved[keys[0]]);
  const combinator = combined ? keys[0] : 'all';
  const children = combined ? saved[combinator] : [saved];
  const conditions = children.map(guessCondition);
  const exact = conditions.every((c, i) => c && canonical(node(c)) === canonical(children[i]));
  return children.length && exact ? { combinator, conditions } : null;
}

/** The path of condition i in the rule, as the server's errors name it. */
function conditionPath(i, count, combinator) {
  return count === 1 ? 'rule' : `rule.${combinator}[${i}]`;
}

// --- the builder -------------------------------------------------------------------------------

function conditionRow(c, index, state) {
  const changed = () => state.changed();
  const rebuild = () => state.redraw();
  const kind = select(KINDS, c.kind, (v) => {
    Object.assign(c, newCondition(), { kind: v, value: v === 'orders' ? '1' : '', days: '30' });
    if (v === 'consent') c.value = 'marketing';
    if (v === 'segment') c.value = state.segments[0] ? state.segments[0].id : '';
    rebuild();
  }, { class: 'kind', 'aria-label': 'Condition' });
  const parts = [kind];
  const text = (value, onInput, props = {}) => {
    const el = h('input', { type: 'text', ...props, oninput: (e) => { onInput(e.target.value); changed(); } });
    el.value = value ?? '';
    return el;
  };
  if (c.kind === 'field') {
    const type = FIELDS[c.field];
    parts.push(
      select(Object.fromEntries(Object.keys(FIELDS).map((f) => [f, f.replaceAll('_', ' ')])), c.field, (v) => {
        c.field = v;
        if (!OPS[FIELDS[v]].includes(c.op)) c.op = OPS[FIELDS[v]][0];
        c.value = FIELDS[v] === 'boolean' ? 'true' : '';
        rebuild();
      }, { class: 'field-name', 'aria-label': 'Field' }),
      select(
        Object.fromEntries(OPS[type].map((op) => [op, (type === 'time' && TIME_OP_WORDS[op]) || OP_WORDS[op]])),
        c.op,
        (v) => { c.op = v; rebuild(); },
        { class: 'op', 'aria-label': 'Comparison' },
      ),
    );
    if (c.op !== 'exists' && c.op !== 'not_exists') {
      if (type === 'boolean') {
        parts.push(select({ true: 'yes', false: 'no' }, c.value || 'true', (v) => { c.value = v; changed(); }, {
          class: 'value', 'aria-label': 'Value',
        }));
      } else {
        parts.push(text(c.value, (v) => { c.value = v; }, {
          class: 'value',
          'aria-label': type === 'time' ? 'Days' : 'Value',
          inputmode: type === 'string' ? undefined : 'numeric',
        }));
      }
    }
    if (CURRENCY_FIELDS.has(c.field)) {
      parts.push(text(c.currency, (v) => { c.currency = v; }, {
        class: 'currency', 'aria-label': 'Currency', maxlength: 3, size: 3,
      }));
    }
  } else if (c.kind === 'tag' || c.kind === 'no_tag') {
    parts.push(text(c.value, (v) => { c.value = v; }, { class: 'value', 'aria-label': 'Tag' }));
  } else if (c.kind === 'segment') {
    parts.push(select(
      Object.fromEntries(state.segments.map((s) => [s.id, s.name])),
      c.value,
      (v) => { c.value = v; changed(); },
      { class: 'value', 'aria-label': 'Segment' },
    ));
  } else if (c.kind === 'consent') {
    parts.push(select(Object.fromEntries(CONSENTS.map((p) => [p, p.replaceAll('_', ' ')])), c.value, (v) => {
      c.value = v;
      changed();
    }, { class: 'value', 'aria-label': 'Purpose' }));
  } else if (c.kind === 'orders') {
    parts.push(
      labelled('at least', text(c.value, (v) => { c.value = v; }, { class: 'value', 'aria-label': 'Orders', inputmode: 'numeric', size: 4 })),
      labelled('times in the last', text(c.days, (v) => { c.days = v; }, { class: 'days', 'aria-label': 'Days', inputmode: 'numeric', size: 4 })),
      h('span', { class: 'muted' }, 'days'),
    );
  }
  const remove = h('button', {
    type: 'button', class: 'remove', 'aria-label': 'Remove this condition',
    onclick: () => { state.conditions.splice(index, 1); rebuild(); },
  }, '×');
  return h(
    'li',
    { class: 'condition', 'data-index': String(index) },
    h('div', { class: 'condition-controls' }, ...parts, remove),
    h('p', { class: 'error field-error', 'data-condition': String(index) }),
  );
}

function cancelButton(state) {
  return h('button', { type: 'button', id: 'cancel-edit', onclick: () => state.openNew() }, 'Cancel');
}

/** The builder for a new segment (state.editing null) or for changing state.editing. */
function builder(state, target) {
  const editing = state.editing;
  state.stop();
  state.title.textContent = editing ? `Edit “${editing.name}”` : 'New segment';
  const combinator = select({ all: 'all of these', any: 'any of these' }, state.combinator, (v) => {
    state.combinator = v;
    state.changed();
  }, { id: 'rule-combinator', 'aria-label': 'Match' });
  const list = h('ol', { class: 'conditions', id: 'conditions' });
  const json = h('pre', { id: 'rule-json', class: 'rule-json' });
  const count = h('p', { id: 'rule-count', class: 'count', 'aria-live': 'polite' }, '–');
  const sample = h('ul', { id: 'rule-sample', class: 'rule-sample', 'aria-label': 'Some of them' });
  const ruleErrors = h('div', { class: 'form-errors', id: 'rule-errors', role: 'alert' });
  const name = h('input', { id: 'segment-name', type: 'text', maxlength: 200, disabled: !state.canEdit });
  const nameError = h('p', { class: 'error field-error', id: 'segment-name-error' });
  name.value = editing ? editing.name : '';
  const saved = h('p', { class: 'meta', id: 'save-status', role: 'status' });
  const conflict = h('div', { class: 'form-errors', id: 'edit-conflict', role: 'alert' });
  const save = h(
    'button',
    { type: 'submit', class: 'primary', id: 'save-segment', disabled: !state.canEdit },
    editing ? 'Save changes' : 'Save segment',
  );
  const add = h('button', {
    type: 'button', id: 'add-condition',
    onclick: () => { state.conditions.push(newCondition()); state.redraw(); },
  }, 'Add a condition');
  let timer = null;
  let asked = 0;

  function showErrors(errors) {
    list.querySelectorAll('[data-condition]').forEach((el) => { el.textContent = ''; });
    ruleErrors.replaceChildren();
    nameError.textContent = '';
    const n = state.conditions.length;
    for (const e of errors) {
      const field = e.field || '';
      if (field === 'name') {
        nameError.textContent = e.message;
        continue;
      }
      let placed = false;
      for (let i = 0; i < n && !placed; i += 1) {
        const path = conditionPath(i, n, state.combinator);
        if (n > 1 ? field === path || field.startsWith(`${path}.`) : field.startsWith('rule')) {
          list.querySelector(`[data-condition="${i}"]`).textContent = `${field}: ${e.message}`;
          placed = true;
        }
      }
      if (!placed) ruleErrors.append(h('p', { class: 'error' }, field ? `${field}: ${e.message}` : e.message));
    }
  }

  async function countNow() {
    const current = rule(state.conditions, state.combinator);
    json.textContent = current ? JSON.stringify(current, null, 2) : '';
    if (!current) {
      count.textContent = '–';
      sample.replaceChildren();
      showErrors([]);
      return;
    }
    const mine = (asked += 1);
    try {
      const answer = await api('POST', '/v1/segments:preview', { rule: current, limit: SAMPLE_SIZE });
      if (mine !== asked) return; // a later change is being counted: its answer wins
      count.textContent = formatNumber(answer.count);
      sample.replaceChildren(...answer.members.map((m) => h(
        'li', { class: 'sample-member' },
        h('a', { href: `#/contacts/${encodeURIComponent(m.contact_id)}`, class: 'email' }, m.email || m.contact_id),
        [m.first_name, m.last_name].filter(Boolean).length ? ` ${[m.first_name, m.last_name].filter(Boolean).join(' ')}` : '',
      )));
      showErrors([]);
    } catch (error) {
      if (mine !== asked) return;
      count.textContent = '–';
      sample.replaceChildren();
      showErrors(problemErrors(error));
    }
  }

  state.stop = () => clearTimeout(timer);
  state.changed = () => {
    const current = rule(state.conditions, state.combinator);
    json.textContent = current ? JSON.stringify(current, null, 2) : '';
    count.textContent = '…';
    clearTimeout(timer);
    timer = setTimeout(countNow, COUNT_DELAY_MS);
  };
  state.redraw = () => {
    list.replaceChildren(...state.conditions.map((c, i) => conditionRow(c, i, state)));
    state.changed();
  };

  const form = h(
    'form',
    { class: 'builder', novalidate: true },
    h('p', {}, 'Contacts who match ', combinator),
    list,
    add,
    h('div', { class: 'live' }, h('span', { class: 'muted' }, 'Contacts now: '), count),
    sample,
    ruleErrors,
    h('details', {}, h('summary', {}, 'The rule as JSON'), json),
    h('label', { for: 'segment-name' }, 'Name'),
    name,
    nameError,
    conflict,
    save,
    editing ? cancelButton(state) : null,
    saved,
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    saved.textContent = '';
    const current = rule(state.conditions, state.combinator);
    if (!current) {
      showErrors([{ field: '', message: 'Add at least one condition.' }]);
      return;
    }
    save.disabled = true;
    conflict.replaceChildren();
    try {
      if (state.editing) {
        const made = await api(
          'PATCH',
          `/v1/segments/${encodeURIComponent(state.editing.id)}`,
          { name: name.value, rule: current },
          { 'If-Match': `"${state.editing.version}"` },
        );
        state.editing = made;
        state.title.textContent = `Edit “${made.name}”`;
        saved.textContent = `Saved changes to “${made.name}”.`;
      } else {
        const made = await api('POST', '/v1/segments', { name: name.value, rule: current });
        saved.textContent = `Saved “${made.name}”.`;
        name.value = '';
      }
      state.reload();
    } catch (error) {
      if (isChangedMeanwhile(error)) conflict.replaceChildren(...changedMeanwhile(state));
      else showErrors(problemErrors(error));
    } finally {
      save.disabled = !state.canEdit;
    }
  });
  target.replaceChildren(form);
  state.redraw();
}

/** A 409 for a stale If-Match ("conflict"), not for a name taken ("already-exists"). */
function isChangedMeanwhile(error) {
  return error instanceof ApiError && error.status === 409
    && String(error.problem?.type || '').endsWith('/conflict');
}

function changedMeanwhile(state) {
  const id = state.editing.id;
  return [
    h('p', { class: 'error' }, 'Someone else changed this segment after you opened it, so your '
      + 'changes were not saved. Reload it to see the current rule (your changes here are then lost).'),
    h('button', { type: 'button', id: 'reload-segment', onclick: () => state.edit(id) }, 'Reload it'),
  ];
}

/** A saved rule the builder cannot show: said so, and the rule shown read-only. */
function readOnly(state, segment, target) {
  state.stop();
  state.title.textContent = `Edit “${segment.name}”`;
  target.replaceChildren(
    h('p', { id: 'rule-unsupported' }, 'This rule uses parts the builder cannot show, so it cannot be '
      + 'changed here without losing them. Here it is, read-only; the API '
      + '(PATCH /v1/segments/{id}) can change it.'),
    h('pre', { class: 'rule-json', id: 'rule-json-readonly', tabindex: 0 }, JSON.stringify(segment.rule, null, 2)),
    cancelButton(state),
  );
}

function problemErrors(error) {
  const problem = (error instanceof ApiError && error.problem) || {};
  if (Array.isArray(problem.errors) && problem.errors.length) {
    return problem.errors.map((e) => ({ field: e.field, message: e.message }));
  }
  return [{ field: '', message: error.message }];
}

// --- the list and the preview ------------------------------------------------------------------

function money(list) {
  return (list || []).map((m) => `${formatNumber(m.amount_minor / 100)} ${m.currency}`).join(', ');
}

async function showPreview(target, segment) {
  target.hidden = false;
  target.replaceChildren(h('h2', { id: 'segment-preview-title' }, segment.name), h('p', { class: 'muted' }, 'Loading…'));
  try {
    const answer = await api('GET', `/v1/segments/${encodeURIComponent(segment.id)}/preview?limit=${PREVIEW_SIZE}`);
    target.replaceChildren(
      h('h2', { id: 'segment-preview-title' }, segment.name),
      h('p', { class: 'meta' }, `${formatNumber(answer.count)} contacts; the first ${answer.members.length}:`),
      answer.members.length
        ? h(
            'table',
            { class: 'table members', tabindex: 0 },
            h('thead', {}, h('tr', {}, ['E-mail', 'Name', 'Orders', 'Spent', 'Last order', 'Tags']
              .map((t) => h('th', { scope: 'col' }, t)))),
            h('tbody', {}, answer.members.map((m) => h(
              'tr',
              { class: 'member', 'data-contact-id': m.contact_id },
              h('td', { class: 'email' }, m.email, m.vip ? ' ★' : ''),
              h('td', {}, [m.first_name, m.last_name].filter(Boolean).join(' ')),
              h('td', {}, formatNumber(m.orders)),
              h('td', {}, money(m.total_spent)),
              h('td', {}, formatDate(m.last_order_at)),
              h('td', {}, (m.tags || []).join(', ')),
            ))),
          )
        : h('p', { class: 'muted' }, 'Nobody is in it now.'),
    );
  } catch (error) {
    target.replaceChildren(failed(error));
  }
}

function segmentRow(segment, state) {
  const figure = h('span', { class: 'count' }, '…');
  api('GET', `/v1/segments/${encodeURIComponent(segment.id)}/count`).then(
    (answer) => { figure.textContent = formatNumber(answer.count); },
    () => { figure.textContent = '–'; },
  );
  const error = h('p', { class: 'error' });
  let armed = false;
  const custom = segment.kind === 'custom';
  const remove = custom ? h('button', { type: 'button', class: 'delete', disabled: !state.canEdit }, 'Delete') : null;
  const edit = custom
    ? h('button', { type: 'button', class: 'edit', disabled: !state.canEdit, onclick: () => state.edit(segment.id) }, 'Edit')
    : null;
  if (remove) {
    remove.addEventListener('click', async () => {
      if (!armed) {
        armed = true;
        remove.textContent = 'Really delete?';
        return;
      }
      error.textContent = '';
      try {
        await api('DELETE', `/v1/segments/${encodeURIComponent(segment.id)}`);
        state.reload();
      } catch (failure) {
        error.textContent = failure.message;
        armed = false;
        remove.textContent = 'Delete';
      }
    });
  }
  return h(
    'li',
    { class: 'segment-row', 'data-segment-id': segment.id },
    h('p', { class: 'row-title segment-name' }, segment.name),
    h('p', { class: 'meta' }, figure, ' contacts', segment.description ? ` · ${segment.description}` : ''),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'button', class: 'preview', onclick: () => showPreview(state.preview, segment) }, 'Preview'),
      edit,
      remove,
    ),
    error,
  );
}

export function renderSegments(main) {
  const builtIn = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const custom = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const builderBox = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const preview = h('section', { class: 'card', id: 'segment-preview', 'aria-labelledby': 'segment-preview-title', hidden: true });
  main.replaceChildren(
    h('h1', {}, 'Segments'),
    section('builtin-segments', 'Lifecycle segments', builtIn),
    section('custom-segment-list', 'Your segments', custom),
    preview,
    section('rule-builder', 'New segment', builderBox),
  );
  const state = {
    canEdit: false,
    conditions: [newCondition()],
    combinator: 'all',
    editing: null,
    segments: [],
    preview,
    title: main.querySelector('#rule-builder-title'),
    stop: () => {},
  };
  let built = false;

  state.openNew = () => {
    Object.assign(state, { editing: null, conditions: [newCondition()], combinator: 'all' });
    builder(state, builderBox);
  };
  // The segment as it is now (its rule and version), into the builder when it can show it.
  state.edit = async (id) => {
    state.stop();
    builderBox.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    builderBox.scrollIntoView({ block: 'nearest' });
    try {
      const segment = await api('GET', `/v1/segments/${encodeURIComponent(id)}`);
      const shown = conditionsOf(segment.rule);
      if (!shown) {
        readOnly(state, segment, builderBox);
        return;
      }
      Object.assign(state, { editing: segment, ...shown });
      builder(state, builderBox);
    } catch (error) {
      builderBox.replaceChildren(failed(error), cancelButton(state));
    }
  };

  state.reload = async () => {
    try {
      const list = await api('GET', '/v1/segments');
      state.segments = list.segments;
      const rows = (kind) => list.segments.filter((s) => s.kind === kind).map((s) => segmentRow(s, state));
      const mine = rows('custom');
      builtIn.replaceChildren(h('ul', { class: 'rows' }, rows('built_in')));
      custom.replaceChildren(
        mine.length ? h('ul', { class: 'rows' }, mine) : h('p', { class: 'muted' }, 'No segments of your own yet.'),
      );
      if (!built) {
        built = true;
        builder(state, builderBox);
      }
    } catch (error) {
      builtIn.replaceChildren(failed(error));
      custom.replaceChildren(failed(error));
      if (!built) builderBox.replaceChildren(failed(error));
    }
  };

  api('GET', '/v1/session')
    .then((session) => { state.canEdit = session.manager.role !== 'viewer'; })
    .catch(() => { state.canEdit = false; })
    .finally(() => state.reload());
}
