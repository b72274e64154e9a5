// Automations: the template gallery (switch one on: create from the template, then publish),
// the workspace's workflows with pause/resume, and one workflow at a time: a form over its
// steps (wait durations, send subjects and bodies) checked by /v1/workflows:validate with
// each error shown at its step, published as a new version; its runs and per-step counts.
// A viewer sees everything with the changing controls disabled: the gateway refuses their
// unsafe requests anyway. Every value from the server is rendered as text (dom.js).
import { api, pageQuery } from './api.js';
import { formatDate, formatNumber, h, moreButton } from './dom.js';

const LIST_SIZE = 100;
const RUNS_SHOWN = 50;

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

// --- the definition's steps as a form ---------------------------------------------------------

/** Every step with its path (`definition.steps[3].then[0]`), branches' steps included. */
function walk(steps, prefix, out = []) {
  (steps || []).forEach((step, index) => {
    const path = `${prefix}[${index}]`;
    out.push({ step, path });
    for (const arm of ['then', 'else']) {
      if (Array.isArray(step[arm])) walk(step[arm], `${path}.${arm}`, out);
    }
  });
  return out;
}

let fieldIds = 0;

function input(label, path, value, onInput, { multiline = false, readOnly = false, hint } = {}) {
  const id = `wf-field-${(fieldIds += 1)}`;
  const control = h(multiline ? 'textarea' : 'input', {
    id,
    'data-path': path,
    rows: multiline ? 6 : undefined,
    type: multiline ? undefined : 'text',
    disabled: readOnly,
    oninput: (event) => onInput(event.target.value),
  });
  control.value = value || '';
  return h(
    'div',
    { class: 'field', 'data-field': path },
    h('label', { for: id }, label),
    control,
    hint ? h('p', { class: 'muted hint' }, hint) : null,
    h('p', { class: 'error field-error', 'data-error-for': path }),
  );
}

function stepForm(step, path, readOnly) {
  const fields = [];
  if (step.type === 'wait') {
    fields.push(
      input('Wait for', `${path}.duration`, step.duration, (v) => { step.duration = v; }, {
        readOnly,
        hint: 'An ISO 8601 duration: PT3H is three hours, P1D one day, PT30M half an hour.',
      }),
    );
  }
  if (step.type === 'send' && step.message) {
    const message = step.message;
    fields.push(
      input('Subject', `${path}.message.subject`, message.subject, (v) => { message.subject = v; }, {
        readOnly,
      }),
      input('Text', `${path}.message.body_text`, message.body_text, (v) => { message.body_text = v; }, {
        readOnly,
        multiline: true,
      }),
    );
  }
  const depth = (path.match(/\.(then|else)\[/g) || []).length;
  return h(
    'fieldset',
    { class: `step step-${step.type} depth-${Math.min(depth, 3)}`, 'data-step-path': path },
    h('legend', {}, step.name || step.id, h('span', { class: 'muted' }, ` · ${step.type}`)),
    ...fields,
    h('p', { class: 'error step-error', 'data-error-for': path }),
  );
}

/** Puts each error next to its field, else on its step, else above the form. */
function showErrors(form, general, errors) {
  form.querySelectorAll('[data-error-for]').forEach((el) => { el.textContent = ''; });
  general.replaceChildren();
  const targets = [...form.querySelectorAll('[data-error-for]')];
  for (const error of errors) {
    const field = error.field || '';
    const exact = targets.find((el) => el.dataset.errorFor === field);
    const step = targets
      .filter((el) => el.classList.contains('step-error'))
      .filter((el) => field.startsWith(`${el.dataset.errorFor}.`) || field === el.dataset.errorFor)
      .sort((a, b) => b.dataset.errorFor.length - a.dataset.errorFor.length)[0];
    const target = exact || step;
    const text = target === exact || !field ? error.message : `${field}: ${error.message}`;
    if (target) {
      target.textContent = target.textContent ? `${target.textContent} ${text}` : text;
    } else {
      general.append(h('p', { class: 'error' }, field ? `${field}: ${error.message}` : error.message));
    }
  }
}

function problemErrors(error) {
  const problem = error.problem || {};
  if (Array.isArray(problem.errors) && problem.errors.length) {
    return problem.errors.map((e) => ({ field: e.field, message: e.message }));
  }
  return [{ field: '', message: error.message }];
}

// --- one workflow ------------------------------------------------------------------------------

/** A test run (POST /v1/workflows/{id}/test-runs): every step at once, no waits, filled with
 * the chosen contact's data, every mail to the manager marked [Test]. The published version,
 * or the saved draft of a workflow never published. A viewer cannot start one. */
function testRunPanel(workflow, ctx) {
  const label = (c) => {
    const name = [c.first_name, c.last_name].filter(Boolean).join(' ');
    return name ? `${name} <${c.email}>` : c.email;
  };
  const readOnly = !ctx.canEdit;
  const who = h('select', { id: 'test-run-contact', name: 'contact_id' });
  const search = h('input', {
    id: 'test-run-search', type: 'search', autocomplete: 'off', placeholder: 'Name or e-mail',
  });
  const to = h('input', { id: 'test-run-email', name: 'recipient', type: 'email', value: ctx.email || '' });
  const button = h('button', { type: 'button', id: 'test-run', disabled: true }, 'Send me a test run');
  const result = h('p', { id: 'test-run-result', role: 'status' });
  let asked = 0;
  async function find(text) {
    const mine = (asked += 1);
    const query = new URLSearchParams({ page_size: '20' });
    if (text) query.set('q', text);
    const page = await api('GET', `/v1/contacts?${query}`).catch(() => null);
    if (!page || mine !== asked) return;
    who.replaceChildren(...page.contacts.map((c) => h('option', { value: c.id }, label(c))));
    button.disabled = readOnly || !page.contacts.length;
    if (!page.contacts.length) result.textContent = 'No contact found: a test run needs one.';
    else if (result.textContent.startsWith('No contact')) result.textContent = '';
  }
  let timer = null;
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => find(search.value.trim()), 300);
  });
  find('');
  button.addEventListener('click', async () => {
    button.disabled = true;
    result.textContent = '';
    try {
      await api('POST', `/v1/workflows/${encodeURIComponent(workflow.id)}/test-runs`, {
        contact_id: who.value,
        recipient: to.value,
        use_draft: workflow.version === 0,
      });
      result.textContent = `Every mail of this automation is on its way to ${to.value}, marked [Test].`;
    } catch (error) {
      result.textContent = problemErrors(error).map((e) => (e.field ? `${e.field}: ${e.message}` : e.message)).join(' ');
    } finally {
      button.disabled = readOnly;
    }
  });
  return h(
    'div',
    { class: 'test-run' },
    h('p', { class: 'muted' }, 'Every step at once, without the waits, with a contact\'s data; every mail comes to you marked [Test].'),
    h('label', { for: 'test-run-search' }, 'Find a contact'), search,
    h('label', { for: 'test-run-contact' }, 'With the data of'), who,
    h('label', { for: 'test-run-email' }, 'Send to'), to,
    button, result,
  );
}

function runRow(r) {
  return h(
    'tr',
    { class: 'run', 'data-run-id': r.id },
    h('td', { class: 'mono' }, h('a', { href: `#/contacts/${encodeURIComponent(r.contact_id)}` }, r.contact_id)),
    h('td', { class: `state state-${r.state}` }, r.state, r.test ? ' (test)' : ''),
    h('td', { class: 'position' }, r.position || r.end_reason || '–'),
    h('td', {}, String(r.version)),
    h('td', {}, formatDate(r.started_at)),
  );
}

/** The latest runs, RUNS_SHOWN at a time with "More" (`more(token)` reads the next page). */
function renderRuns(target, list, more) {
  if (!list.runs.length) {
    target.replaceChildren(h('p', { class: 'muted' }, 'No runs yet.'));
    return;
  }
  const body = h('tbody', {}, list.runs.map(runRow));
  const [button, error] = moreButton('more-runs', 'More runs', list.next_page_token, more, (next) => body.append(...next.runs.map(runRow)));
  target.replaceChildren(
    h(
      'table',
      { class: 'table runs', tabindex: 0 },
      h('thead', {}, h('tr', {}, ['Contact', 'State', 'Next step', 'Version', 'Started']
        .map((t) => h('th', { scope: 'col' }, t)))),
      body,
    ),
    button,
    error,
  );
}

function renderStats(target, stats, names) {
  target.replaceChildren(
    h(
      'p',
      { class: 'meta', id: 'run-totals' },
      `${formatNumber(stats.runs_started)} started · ${formatNumber(stats.runs_active)} going · `
        + `${formatNumber(stats.runs_completed)} completed · ${formatNumber(stats.runs_exited)} ended early`,
    ),
    stats.steps.length
      ? h(
          'table',
          { class: 'table stats', tabindex: 0 },
          h('thead', {}, h('tr', {}, ['Step', 'Reached', 'Done', 'Waiting', 'Yes / no', 'Skipped']
            .map((t) => h('th', { scope: 'col' }, t)))),
          h(
            'tbody',
            {},
            stats.steps.map((s) =>
              h(
                'tr',
                { class: 'step-stats', 'data-step-id': s.step_id },
                h('td', {}, names.get(s.step_id) || s.step_id),
                h('td', {}, formatNumber(s.entered)),
                h('td', {}, formatNumber(s.completed)),
                h('td', {}, formatNumber(s.waiting)),
                h('td', {}, `${formatNumber(s.yes)} / ${formatNumber(s.no)}`),
                h('td', {}, formatNumber(s.skipped)),
              ),
            ),
          ),
        )
      : '',
  );
}

function renderEditor(target, workflow, ctx) {
  const definition = structuredClone(workflow.definition || {});
  const steps = walk(definition.steps, 'definition.steps');
  const names = new Map(steps.map(({ step }) => [step.id, step.name || step.id]));
  const readOnly = !ctx.canEdit;
  const general = h('div', { class: 'form-errors', role: 'alert' });
  const status = h('p', { class: 'meta', id: 'editor-status' });
  const form = h(
    'form',
    { class: 'workflow-form', novalidate: true },
    input('Name', 'definition.name', definition.name, (v) => { definition.name = v; }, {
      readOnly,
    }),
    ...steps.map(({ step, path }) => stepForm(step, path, readOnly)),
    general,
  );
  const check = h('button', { type: 'button', id: 'check-workflow' }, 'Check');
  const publish = h(
    'button',
    { type: 'submit', class: 'primary', id: 'publish-workflow', disabled: readOnly },
    'Publish',
  );
  form.append(h('div', { class: 'actions' }, check, publish), status);

  async function validate() {
    const answer = await api('POST', '/v1/workflows:validate', { definition });
    showErrors(form, general, answer.errors);
    return answer;
  }

  check.addEventListener('click', async () => {
    status.textContent = '';
    try {
      const answer = await validate();
      status.textContent = answer.valid ? 'No problems found.' : '';
    } catch (error) {
      showErrors(form, general, problemErrors(error));
    }
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (readOnly) return;
    publish.disabled = true;
    status.textContent = '';
    try {
      const checked = await validate();
      if (!checked.valid) return;
      // The draft first (against the revision we loaded: a change made meanwhile is a
      // 409 shown here, not overwritten), then that revision becomes the next version.
      const draft = await api('PUT', `/v1/workflows/${encodeURIComponent(workflow.id)}`, {
        definition,
        expected_revision: workflow.draft_revision,
      });
      const published = await api(
        'POST',
        `/v1/workflows/${encodeURIComponent(workflow.id)}/publish`,
        { expected_revision: draft.draft_revision },
      );
      ctx.reload(published.id, `Published version ${published.version}.`);
    } catch (error) {
      showErrors(form, general, problemErrors(error));
    } finally {
      publish.disabled = readOnly;
    }
  });

  const runs = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const stats = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const id = encodeURIComponent(workflow.id);
  const runsPage = (token) => api('GET', `/v1/workflows/${id}/runs?${pageQuery(RUNS_SHOWN, token)}`);
  runsPage('')
    .then((list) => renderRuns(runs, list, runsPage))
    .catch((error) => runs.replaceChildren(failed(error)));
  api('GET', `/v1/workflows/${id}/stats`)
    .then((answer) => renderStats(stats, answer, names))
    .catch((error) => stats.replaceChildren(failed(error)));

  target.replaceChildren(
    h('h2', { id: 'editor-title' }, workflow.name),
    h(
      'p',
      { class: 'meta' },
      `${workflow.status} · version ${workflow.version} · starts on ${workflow.trigger}`,
    ),
    ctx.notice ? h('p', { class: 'notice', role: 'status' }, ctx.notice) : '',
    readOnly ? h('p', { class: 'muted' }, 'A viewer can look at automations but not change them.') : '',
    form,
    h('h3', {}, 'Test run'),
    testRunPanel(workflow, ctx),
    h('h3', {}, 'Per step'),
    stats,
    h('h3', {}, 'Runs'),
    runs,
  );
}

// --- the page ------------------------------------------------------------------------------------

function workflowRow(workflow, ctx) {
  const id = encodeURIComponent(workflow.id);
  const error = h('p', { class: 'error' });
  const move = async (action) => {
    error.textContent = '';
    try {
      await api('POST', `/v1/workflows/${id}/${action}`);
      ctx.reload(workflow.id);
    } catch (failure) {
      error.textContent = failure.message;
    }
  };
  const toggle =
    workflow.status === 'active'
      ? h('button', { type: 'button', class: 'pause', disabled: !ctx.canEdit, onclick: () => move('pause') }, 'Pause')
      : workflow.status === 'paused'
        ? h('button', { type: 'button', class: 'resume', disabled: !ctx.canEdit, onclick: () => move('resume') }, 'Resume')
        : null;
  return h(
    'li',
    { class: 'workflow', 'data-workflow-id': workflow.id },
    h('p', { class: 'row-title' }, workflow.name),
    h(
      'p',
      { class: 'meta' },
      h('span', { class: `status status-${workflow.status}` }, workflow.status),
      ` · version ${workflow.version}`,
      workflow.draft_changed ? ' · unpublished changes' : '',
    ),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'button', class: 'open', onclick: () => ctx.open(workflow.id) }, 'Open'),
      toggle,
    ),
    error,
  );
}

function templateCard(template, ctx) {
  const error = h('p', { class: 'error' });
  const button = h(
    'button',
    { type: 'button', class: 'primary switch-on', disabled: !ctx.canEdit },
    'Switch on',
  );
  button.addEventListener('click', async () => {
    button.disabled = true;
    error.textContent = '';
    try {
      const draft = await api('POST', '/v1/workflows', { template_id: template.id });
      const published = await api(
        'POST',
        `/v1/workflows/${encodeURIComponent(draft.id)}/publish`,
        { expected_revision: draft.draft_revision },
      );
      ctx.reload(published.id, `${published.name} is on.`);
    } catch (failure) {
      error.textContent = failure.message;
      button.disabled = !ctx.canEdit;
    }
  });
  return h(
    'li',
    { class: 'template', 'data-template-id': template.id },
    h('h3', { class: 'template-name' }, template.name),
    h('p', { class: 'description' }, template.description),
    button,
    error,
  );
}

export function renderAutomations(main) {
  const templates = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const workflows = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const editor = h('section', { class: 'card', id: 'workflow-editor', hidden: true });
  main.replaceChildren(
    h('h1', {}, 'Automations'),
    section('workflows', 'Your automations', workflows),
    editor,
    section('templates', 'Templates', templates),
  );
  const ctx = { canEdit: false, selected: null, notice: '' };

  async function loadList() {
    try {
      const list = await api('GET', `/v1/workflows?page_size=${LIST_SIZE}`);
      workflows.replaceChildren(
        list.workflows.length
          ? h('ul', { class: 'rows' }, list.workflows.map((w) => workflowRow(w, ctx)))
          : h('p', { class: 'muted' }, 'No automation yet: switch one on from the templates.'),
      );
    } catch (error) {
      workflows.replaceChildren(failed(error));
    }
  }

  async function loadEditor() {
    if (!ctx.selected) return;
    editor.hidden = false;
    try {
      const workflow = await api('GET', `/v1/workflows/${encodeURIComponent(ctx.selected)}`);
      renderEditor(editor, workflow, ctx);
    } catch (error) {
      editor.replaceChildren(failed(error));
    }
  }

  ctx.open = (id) => {
    ctx.selected = id;
    ctx.notice = '';
    loadEditor().then(() => editor.scrollIntoView({ block: 'start' }));
  };
  ctx.reload = (id, notice = '') => {
    ctx.selected = id || ctx.selected;
    ctx.notice = notice;
    loadList();
    loadEditor();
  };

  api('GET', '/v1/session')
    .then((session) => {
      ctx.canEdit = session.manager.role !== 'viewer';
      ctx.email = session.manager.email;
    })
    .catch(() => { ctx.canEdit = false; })
    .finally(() => {
      loadList();
      api('GET', '/v1/workflow-templates')
        .then((list) =>
          templates.replaceChildren(
            h('ul', { class: 'grid templates' }, list.templates.map((t) => templateCard(t, ctx))),
          ),
        )
        .catch((error) => templates.replaceChildren(failed(error)));
    });
}
