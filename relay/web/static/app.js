// Browser client of hpc-relay. It renders a form from a template's JSON Schema, submits the
// job over a websocket, shows the job's events and resumes after a dropped connection.
// Job and template data reach the DOM only through textContent, text nodes and attribute
// values, never as markup. The wire format is in docs/protocol.md.
"use strict";

const KEY_STORAGE_NAME = "hpc-relay.api-key";

// Resuming: the delay doubles after each attempt that brings no new event, up to the maximum.
const MAX_RESUME_ATTEMPTS = 6;
const RESUME_BASE_DELAY_MS = 500;
const RESUME_MAX_DELAY_MS = 8000;

// The log pane keeps this many lines and drops the oldest, so a chatty job cannot exhaust
// the page's memory.
const MAX_LOG_LINES = 10000;

const TERMINAL_STATE_BY_CLOSE_CODE = new Map([
  [1000, "completed"],
  [4000, "failed"],
  [4001, "cancelled"],
]);

// Close codes after which the page attaches again with ?after=<last seq>: relay shutdown
// (1001), abnormal closure such as a dropped network (1006), internal error or broker
// unavailable (1011) and a client too slow to keep up (4408).
const RESUMABLE_CLOSE_CODES = new Set([1001, 1006, 1011, 4408]);

// Chunks with one of these media types get an audio player. Any other chunk is offered for
// download as application/octet-stream, so a blob: URL opened in a tab never renders job
// bytes as HTML in this page's origin.
const AUDIO_MEDIA_TYPE = /^audio\/[A-Za-z0-9!#$&^_.+-]+(\s*;.*)?$/;
const FILE_EXTENSIONS = new Map([
  ["audio/wav", ".wav"],
  ["audio/x-wav", ".wav"],
  ["audio/wave", ".wav"],
  ["audio/mpeg", ".mp3"],
  ["audio/ogg", ".ogg"],
  ["audio/opus", ".opus"],
  ["audio/webm", ".webm"],
  ["audio/flac", ".flac"],
  ["audio/mp4", ".m4a"],
  ["audio/aac", ".aac"],
]);

const elements = {};

let templates = [];
let formFields = [];
// The job this page shows, or null before the first submit. See newJob().
let job = null;

function byId(id) {
  const element = document.getElementById(id);
  if (element === null) {
    throw new Error(`the page has no element #${id}`);
  }
  return element;
}

function isPlainObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function asText(value) {
  if (typeof value === "string") {
    return value;
  }
  return JSON.stringify(value);
}

function formatJson(value) {
  return JSON.stringify(value, null, 2) ?? "null";
}

function formatSize(bytes) {
  if (bytes < 1024) {
    return `${bytes} bytes`;
  }
  if (bytes < 1024 * 1024) {
    return `${(bytes / 1024).toFixed(1)} KiB (${bytes} bytes)`;
  }
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB (${bytes} bytes)`;
}

// ---------------------------------------------------------------------------------------
// API key and URLs

function apiKey() {
  return elements.apiKey.value.trim();
}

function urlWithKey(path) {
  const url = new URL(path, window.location.href);
  const key = apiKey();
  if (key) {
    url.searchParams.set("access_token", key);
  }
  return url;
}

function websocketUrl(path) {
  const url = urlWithKey(path);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function storeApiKey() {
  const key = apiKey();
  try {
    if (key) {
      window.sessionStorage.setItem(KEY_STORAGE_NAME, key);
    } else {
      window.sessionStorage.removeItem(KEY_STORAGE_NAME);
    }
  } catch (error) {
    console.warn("session storage unavailable; the API key is kept in the field only", error);
  }
}

function restoreApiKey() {
  try {
    elements.apiKey.value = window.sessionStorage.getItem(KEY_STORAGE_NAME) ?? "";
  } catch (error) {
    console.warn("session storage unavailable", error);
  }
}

// ---------------------------------------------------------------------------------------
// Templates

async function loadTemplates() {
  elements.templatesStatus.textContent = "Loading templates…";
  let response;
  try {
    response = await fetch(urlWithKey("/templates"), { cache: "no-store" });
  } catch (error) {
    elements.templatesStatus.textContent = `Could not reach the relay: ${error.message}`;
    return;
  }

  if (response.status === 401) {
    showTemplates([], []);
    elements.templatesStatus.textContent =
      "The relay requires an API key. Enter a valid key, then press Load templates.";
    return;
  }

  let body;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const detail = isPlainObject(body) && typeof body.error === "string" ? `: ${body.error}` : "";
    const status = `Loading templates failed with HTTP ${response.status}${detail}`;
    elements.templatesStatus.textContent = status;
    return;
  }
  if (!isPlainObject(body) || !Array.isArray(body.templates)) {
    elements.templatesStatus.textContent = "Loading templates failed: the response contains no templates list.";
    return;
  }
  const clusters = Array.isArray(body.clusters)
    ? body.clusters.filter((name) => typeof name === "string")
    : [];
  const valid = body.templates.filter((t) => isPlainObject(t) && typeof t.name === "string");
  showTemplates(valid, clusters);

  const count = templates.length;
  elements.templatesStatus.textContent = `${count} template${count === 1 ? "" : "s"} loaded.`;
}

function showTemplates(newTemplates, clusters) {
  const previous = elements.templateSelect.value;
  templates = newTemplates;
  const options = templates.map((template) => {
    const option = document.createElement("option");
    option.value = template.name;
    const title = isPlainObject(template.schema) ? template.schema.title : undefined;
    const hasTitle = typeof title === "string" && title !== "";
    option.textContent = hasTitle ? `${template.name} (${title})` : template.name;
    return option;
  });
  elements.templateSelect.replaceChildren(...options);
  if (templates.some((template) => template.name === previous)) {
    elements.templateSelect.value = previous;
  }

  const clusterOptions = clusters.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    return option;
  });
  const defaultOption = document.createElement("option");
  defaultOption.value = "";
  defaultOption.textContent = "relay default";
  elements.clusterSelect.replaceChildren(defaultOption, ...clusterOptions);
  elements.clusterRow.hidden = clusters.length < 2;
  renderForm();
}

function selectedTemplate() {
  return templates.find((template) => template.name === elements.templateSelect.value) ?? null;
}

// ---------------------------------------------------------------------------------------
// The argument form, rendered from the template's JSON Schema (draft 2020-12)

// Returns the JSON type of a property: the first of its types that is not "null", else the
// type of its default or of its first enum value, else null (edited as JSON).
function propertyType(property) {
  const types = Array.isArray(property.type) ? property.type : [property.type];
  const named = types.find((type) => typeof type === "string" && type !== "null");
  if (named) {
    return named;
  }
  const sample = property.default !== undefined ? property.default : property.enum?.[0];
  if (typeof sample === "boolean" || typeof sample === "string") {
    return typeof sample;
  }
  if (typeof sample === "number") {
    return Number.isInteger(sample) ? "integer" : "number";
  }
  return null;
}

function renderForm() {
  formFields = [];
  elements.formError.textContent = "";
  const template = selectedTemplate();
  if (template === null) {
    elements.templateDescription.textContent = "";
    elements.fields.replaceChildren();
    return;
  }
  const schema = isPlainObject(template.schema) ? template.schema : {};
  elements.templateDescription.textContent =
    typeof schema.description === "string" ? schema.description : "";
  const properties = isPlainObject(schema.properties) ? schema.properties : {};
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);

  Object.entries(properties).forEach(([name, property], index) => {
    const definition = isPlainObject(property) ? property : {};
    formFields.push(createField(name, definition, required.has(name), `arg-${index}`));
  });
  if (schema.additionalProperties !== false) {
    formFields.push(createExtraArgumentsField());
  }
  const nodes = formFields.map((field) => field.element);
  if (nodes.length === 0) {
    const note = document.createElement("p");
    note.className = "hint";
    note.textContent = "This template takes no arguments.";
    nodes.push(note);
  }
  elements.fields.replaceChildren(...nodes);
}

// Builds the label, control, description, constraint hint and error line of one argument.
// Returns {name, element, control, check(), read()}: check() sets the control's custom
// validity and read() returns {present, value} for the submit frame.
function createField(name, property, required, id) {
  const type = propertyType(property);
  const wrapper = document.createElement("div");
  wrapper.className = "field";
  wrapper.dataset.argument = name;

  const label = document.createElement("label");
  label.htmlFor = id;
  const title = typeof property.title === "string" && property.title ? property.title : name;
  label.textContent = required ? `${title} (required)` : title;

  let control;
  let read;
  let check = () => "";
  const hints = [];

  if (Array.isArray(property.enum)) {
    control = document.createElement("select");
    if (!required) {
      const option = document.createElement("option");
      option.value = "";
      option.textContent = property.default !== undefined ? "(relay default)" : "(none)";
      control.append(option);
    }
    property.enum.forEach((value, index) => {
      const option = document.createElement("option");
      option.value = String(index);
      option.textContent = asText(value);
      if (JSON.stringify(value) === JSON.stringify(property.default)) {
        option.selected = true;
      }
      control.append(option);
    });
    read = () =>
      control.value === "" ? ABSENT : present(property.enum[Number(control.value)]);
  } else if (type === "boolean") {
    control = document.createElement("input");
    control.type = "checkbox";
    control.checked = property.default === true;
    read = () => present(control.checked);
  } else if (type === "integer" || type === "number") {
    control = createNumberInput(property, type, hints);
    read = () => (control.value === "" ? ABSENT : present(control.valueAsNumber));
    check = () => checkNumber(control, property, type);
  } else if (type === "string") {
    control = document.createElement("input");
    control.type = "text";
    control.spellcheck = false;
    if (typeof property.default === "string") {
      control.value = property.default;
    }
    describeStringConstraints(property, hints);
    // An empty optional string is left out, so the relay fills in the schema's default.
    read = () => (control.value === "" && !required ? ABSENT : present(control.value));
    check = () => checkString(control.value, property, required);
  } else {
    control = document.createElement("textarea");
    control.rows = 3;
    control.spellcheck = false;
    if (property.default !== undefined) {
      control.value = JSON.stringify(property.default);
    }
    hints.push(type ? `A JSON ${type}.` : "A JSON value.");
    read = () => readJson(control);
    check = () => checkJson(control.value, type);
  }
  control.id = id;
  control.name = name;
  if (required && type !== "boolean") {
    control.required = true;
  }

  const describedBy = [];
  wrapper.append(label, control);
  if (typeof property.description === "string" && property.description) {
    wrapper.append(paragraph("description", `${id}-description`, property.description));
    describedBy.push(`${id}-description`);
  }
  if (hints.length) {
    wrapper.append(paragraph("hint", `${id}-hint`, hints.join(" ")));
    describedBy.push(`${id}-hint`);
  }
  const error = paragraph("field-error", `${id}-error`, "");
  wrapper.append(error);
  describedBy.push(`${id}-error`);
  control.setAttribute("aria-describedby", describedBy.join(" "));

  const field = {
    name,
    element: wrapper,
    control,
    read,
    check() {
      control.setCustomValidity(check());
      return control.validity.valid;
    },
  };
  watchValidity(field, error);
  return field;
}

// A textarea for arguments the schema does not list, when additionalProperties allows them.
function createExtraArgumentsField() {
  const id = "arg-extra";
  const wrapper = document.createElement("div");
  wrapper.className = "field";
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = "Other arguments";
  const control = document.createElement("textarea");
  control.id = id;
  control.rows = 3;
  control.spellcheck = false;
  control.placeholder = '{"name": "value"}';
  const hintText = "A JSON object of arguments that the form does not list.";
  const hint = paragraph("hint", `${id}-hint`, hintText);
  const error = paragraph("field-error", `${id}-error`, "");
  control.setAttribute("aria-describedby", `${id}-hint ${id}-error`);
  wrapper.append(label, control, hint, error);
  const field = {
    name: null,
    element: wrapper,
    control,
    read: () => readJson(control),
    check() {
      control.setCustomValidity(checkJson(control.value, "object"));
      return control.validity.valid;
    },
  };
  watchValidity(field, error);
  return field;
}

const ABSENT = Object.freeze({ present: false });

function present(value) {
  return { present: true, value };
}

// An empty JSON field is left out. Its check() has already rejected text that is not JSON.
function readJson(control) {
  return control.value.trim() === "" ? ABSENT : present(JSON.parse(control.value));
}

function paragraph(className, id, text) {
  const element = document.createElement("p");
  element.className = className;
  element.id = id;
  element.textContent = text;
  return element;
}

// Shows the browser's validation message under the control when form validation fails, and
// updates or clears it as the user edits.
function watchValidity(field, error) {
  field.control.addEventListener("invalid", () => {
    error.textContent = field.control.validationMessage;
  });
  const update = () => {
    field.check();
    error.textContent = error.textContent ? field.control.validationMessage : "";
  };
  field.control.addEventListener("input", update);
  field.control.addEventListener("change", update);
}

function createNumberInput(property, type, hints) {
  const control = document.createElement("input");
  control.type = "number";
  const { minimum, maximum } = property;
  if (typeof minimum === "number") {
    control.min = String(minimum);
  }
  if (typeof maximum === "number") {
    control.max = String(maximum);
  }
  // step="1" counts from min, so it is used only when min is itself an integer.
  const integerBase = typeof minimum !== "number" || Number.isInteger(minimum);
  control.step = type === "integer" && integerBase ? "1" : "any";
  if (typeof property.default === "number") {
    control.value = String(property.default);
  }

  const noun = type === "integer" ? "An integer" : "A number";
  const bounds = [];
  if (typeof minimum === "number" && typeof maximum === "number") {
    bounds.push(`from ${minimum} to ${maximum}`);
  } else if (typeof minimum === "number") {
    bounds.push(`at least ${minimum}`);
  } else if (typeof maximum === "number") {
    bounds.push(`at most ${maximum}`);
  }
  if (typeof property.exclusiveMinimum === "number") {
    bounds.push(`greater than ${property.exclusiveMinimum}`);
  }
  if (typeof property.exclusiveMaximum === "number") {
    bounds.push(`less than ${property.exclusiveMaximum}`);
  }
  if (typeof property.multipleOf === "number") {
    bounds.push(`a multiple of ${property.multipleOf}`);
  }
  hints.push(bounds.length ? `${noun} ${bounds.join(", ")}.` : `${noun}.`);
  if (property.default !== undefined) {
    hints.push(`Default: ${asText(property.default)}.`);
  }
  return control;
}

// Returns a validation message for constraints that the number input's own attributes do
// not check, or "" when the value is valid or empty.
function checkNumber(control, property, type) {
  if (control.value === "") {
    return "";
  }
  const value = control.valueAsNumber;
  if (Number.isNaN(value)) {
    return ""; // The browser reports badInput itself.
  }
  if (type === "integer" && !Number.isInteger(value)) {
    return "Enter an integer.";
  }
  if (typeof property.exclusiveMinimum === "number" && !(value > property.exclusiveMinimum)) {
    return `Enter a number greater than ${property.exclusiveMinimum}.`;
  }
  if (typeof property.exclusiveMaximum === "number" && !(value < property.exclusiveMaximum)) {
    return `Enter a number less than ${property.exclusiveMaximum}.`;
  }
  if (typeof property.multipleOf === "number" && property.multipleOf > 0) {
    const quotient = value / property.multipleOf;
    if (Math.abs(quotient - Math.round(quotient)) > 1e-9) {
      return `Enter a multiple of ${property.multipleOf}.`;
    }
  }
  return "";
}

function describeStringConstraints(property, hints) {
  if (typeof property.minLength === "number" && typeof property.maxLength === "number") {
    hints.push(`${property.minLength} to ${property.maxLength} characters.`);
  } else if (typeof property.maxLength === "number") {
    hints.push(`At most ${property.maxLength} characters.`);
  } else if (typeof property.minLength === "number") {
    hints.push(`At least ${property.minLength} characters.`);
  }
  if (typeof property.pattern === "string") {
    hints.push(`Must match the regular expression ${property.pattern}`);
  }
}

// Returns a validation message, or "". JSON Schema counts a string's length in Unicode code
// points, and its pattern matches anywhere in the string unless the pattern anchors itself.
// The maxlength and pattern attributes count UTF-16 code units and match the whole value,
// so the form checks both here instead.
function checkString(value, property, required) {
  if (value === "" && !required) {
    return "";
  }
  const length = [...value].length;
  if (typeof property.maxLength === "number" && length > property.maxLength) {
    return `Use at most ${property.maxLength} characters (now ${length}).`;
  }
  if (typeof property.minLength === "number" && length < property.minLength) {
    return `Use at least ${property.minLength} characters (now ${length}).`;
  }
  if (typeof property.pattern === "string") {
    const pattern = compilePattern(property.pattern);
    if (pattern !== null && !pattern.test(value)) {
      return `Enter a value that matches the regular expression ${property.pattern}`;
    }
  }
  return "";
}

// Returns the pattern as a RegExp, or null when JavaScript cannot compile it. The relay
// still checks such a pattern when the job is submitted.
function compilePattern(source) {
  for (const flags of ["u", ""]) {
    try {
      return new RegExp(source, flags);
    } catch (error) {
      // Try without the u flag, which rejects some escapes that older patterns use.
    }
  }
  return null;
}

function checkJson(text, type) {
  if (text.trim() === "") {
    return "";
  }
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return `Enter valid JSON: ${error.message}`;
  }
  const actual = value === null ? "null" : Array.isArray(value) ? "array" : typeof value;
  if (type === "object" && actual !== "object") {
    return `Enter a JSON object, not ${actual === "object" ? "an object" : `a JSON ${actual}`}.`;
  }
  if (type === "array" && actual !== "array") {
    return `Enter a JSON array, not a JSON ${actual}.`;
  }
  return "";
}

function collectArguments() {
  let args = {};
  for (const field of formFields) {
    const { present, value } = field.read();
    if (!present) {
      continue;
    }
    if (field.name === null) {
      // A named field wins over the same name in Other arguments, whichever comes first.
      args = { ...value, ...args };
    } else {
      args[field.name] = value;
    }
  }
  return args;
}

// ---------------------------------------------------------------------------------------
// The job view

function newJob() {
  return {
    id: null,
    lastSeq: -1,
    socket: null,
    finished: false,
    started: false,
    fatalShown: false,
    resumeAttempts: 0,
    resumeTimer: null,
    lastClose: "",
    blobUrls: [],
    tokenText: null,
    logLineCount: 0,
    droppedLogLines: 0,
    audioQueue: [],
    playingAudio: null,
  };
}

function resetJobView() {
  if (job !== null) {
    clearTimeout(job.resumeTimer);
    if (job.playingAudio) {
      job.playingAudio.pause();
    }
    job.blobUrls.forEach((url) => URL.revokeObjectURL(url));
  }
  const textElements = [
    "jobId",
    "jobState",
    "schedulerId",
    "jobHost",
    "connectionState",
    "progressPercent",
    "progressMessage",
    "fatalMessage",
    "fatalExitStatus",
    "completeData",
    "formError",
  ];
  for (const name of textElements) {
    elements[name].textContent = "";
  }
  elements.progress.value = 0;
  elements.fatal.hidden = true;
  elements.tokenText.replaceChildren();
  elements.logLines.replaceChildren();
  elements.logDropped.hidden = true;
  elements.results.replaceChildren();
  elements.chunks.replaceChildren();
  elements.reconnectButton.hidden = true;
}

function setState(state) {
  elements.jobState.textContent = state;
  elements.jobState.dataset.state = state.split(" ")[0];
}

function setConnection(text) {
  elements.connectionState.textContent = text;
}

function setRunning(running) {
  elements.submitButton.disabled = running;
  elements.cancelButton.disabled = !running || job === null || job.id === null;
}

function showFormError(message) {
  elements.formError.textContent = message;
}

// ---------------------------------------------------------------------------------------
// Submitting, streaming and resuming

function submitJob() {
  const template = selectedTemplate();
  if (template === null) {
    showFormError("Load the templates and pick one first.");
    return;
  }
  let args;
  try {
    args = collectArguments();
  } catch (error) {
    showFormError(`Invalid arguments: ${error.message}`);
    return;
  }
  const frame = { type: "submit", script: template.name, args };
  if (elements.clusterSelect.value) {
    frame.cluster = elements.clusterSelect.value;
  }
  storeApiKey();
  resetJobView();
  job = newJob();
  setState("submitting");
  setRunning(true);
  openSocket(websocketUrl("/ws/jobs"), JSON.stringify(frame));
}

function openSocket(url, firstFrame) {
  const current = job;
  setConnection("connecting");
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  current.socket = socket;
  socket.addEventListener("open", () => {
    if (firstFrame !== null) {
      socket.send(firstFrame);
    }
    const resumed = current.lastSeq >= 0;
    setConnection(resumed ? `connected, resumed after seq ${current.lastSeq}` : "connected");
  });
  socket.addEventListener("message", (message) => {
    if (job === current && current.socket === socket) {
      receiveFrame(message.data);
    }
  });
  socket.addEventListener("close", (event) => {
    if (job === current && current.socket === socket) {
      current.socket = null;
      handleClose(event.code, event.reason);
    }
  });
}

function receiveFrame(data) {
  let event;
  try {
    event = typeof data === "string" ? JSON.parse(data) : decodeBinaryFrame(data);
  } catch (error) {
    console.warn("ignored a frame that could not be decoded", error);
    appendLog(`[page] ignored a frame that could not be decoded: ${error.message}`);
    return;
  }
  if (!isPlainObject(event)) {
    return;
  }
  if (typeof event.seq !== "number") {
    if (event.type === "trimmed" && isPlainObject(event.data)) {
      const { after, first_seq: firstSeq } = event.data;
      const range = `${after + 1} to ${firstSeq - 1}`;
      appendLog(`[page] events ${range} are no longer in the relay's history and are not shown`);
    }
    return;
  }
  // After a resume the relay sends only events after ?after=, and this check drops any
  // event the page has already shown, so no event appears twice.
  if (event.seq <= job.lastSeq) {
    return;
  }
  job.lastSeq = event.seq;
  job.resumeAttempts = 0;
  if (job.id === null && typeof event.job === "string") {
    job.id = event.job;
    elements.jobId.textContent = event.job;
    setRunning(true);
  }
  showEvent(event);
}

// Splits a chunk frame: a 4-byte big-endian length H, H bytes of JSON envelope, the payload.
function decodeBinaryFrame(buffer) {
  if (buffer.byteLength < 4) {
    throw new Error(`binary frame of ${buffer.byteLength} bytes is shorter than its length prefix`);
  }
  const headerLength = new DataView(buffer).getUint32(0, false);
  if (headerLength > buffer.byteLength - 4) {
    throw new Error(`binary frame header length ${headerLength} exceeds the frame`);
  }
  const headerBytes = new Uint8Array(buffer, 4, headerLength);
  const header = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes);
  const envelope = JSON.parse(header);
  if (!isPlainObject(envelope)) {
    throw new Error("binary frame header is not a JSON object");
  }
  envelope.payload = buffer.slice(4 + headerLength);
  return envelope;
}

function showEvent(event) {
  const data = event.data;
  switch (event.type) {
    case "starting":
      setState("starting");
      break;
    case "queued":
      // queued may arrive after started when the job starts before qsub returns.
      if (!job.started) {
        setState("queued");
      }
      if (isPlainObject(data) && data.scheduler_id !== undefined) {
        elements.schedulerId.textContent = asText(data.scheduler_id);
      }
      break;
    case "started":
      job.started = true;
      setState("running");
      if (isPlainObject(data) && data.host !== undefined) {
        elements.jobHost.textContent = asText(data.host);
      }
      break;
    case "progress":
      showProgress(data);
      break;
    case "log":
      appendLog(asText(data));
      break;
    case "token":
      appendToken(asText(data));
      break;
    case "chunk":
      addChunk(event);
      break;
    case "result":
      addResult(data);
      break;
    case "complete":
      elements.completeData.textContent = formatJson(data);
      finish("completed");
      break;
    case "fatal":
      showFatal(data);
      finish("failed");
      break;
    case "cancelled": {
      const by = isPlainObject(data) && typeof data.by === "string" ? ` by ${data.by}` : "";
      finish(`cancelled${by}`);
      break;
    }
    default:
      appendLog(`[${asText(event.type)}] ${formatJson(data)}`);
  }
}

function showProgress(data) {
  if (!isPlainObject(data)) {
    return;
  }
  const percent = Number(data.percent);
  if (Number.isFinite(percent)) {
    const clamped = Math.min(100, Math.max(0, percent));
    elements.progress.value = clamped;
    elements.progressPercent.textContent = `${clamped}%`;
  }
  if (data.message !== undefined) {
    elements.progressMessage.textContent = asText(data.message);
  }
}

function appendLog(text) {
  const pane = elements.logLines;
  const follow = isScrolledToBottom(pane);
  const line = document.createElement("li");
  line.textContent = text;
  pane.append(line);
  job.logLineCount += 1;
  if (job.logLineCount > MAX_LOG_LINES) {
    pane.firstElementChild.remove();
    job.logLineCount -= 1;
    job.droppedLogLines += 1;
    elements.logDropped.hidden = false;
    elements.logDropped.textContent = `${job.droppedLogLines} earlier lines are no longer shown.`;
  }
  if (follow) {
    pane.scrollTop = pane.scrollHeight;
  }
}

// Tokens go into one text node, so appending is cheap and the pane's text is their join.
function appendToken(text) {
  const pane = elements.tokenText;
  const follow = isScrolledToBottom(pane);
  if (job.tokenText === null) {
    job.tokenText = document.createTextNode("");
    pane.append(job.tokenText);
  }
  job.tokenText.appendData(text);
  if (follow) {
    pane.scrollTop = pane.scrollHeight;
  }
}

function isScrolledToBottom(element) {
  return element.scrollHeight - element.scrollTop - element.clientHeight < 4;
}

function addResult(data) {
  const block = document.createElement("pre");
  block.className = "pane result";
  block.textContent = formatJson(data);
  elements.results.append(block);
}

function showFatal(data) {
  const details = isPlainObject(data) ? data : { message: asText(data) };
  elements.fatal.hidden = false;
  elements.fatalMessage.textContent = details.message === undefined ? "" : asText(details.message);
  const status = details.exit_status;
  const hasStatus = status !== null && status !== undefined;
  elements.fatalExitStatus.textContent = hasStatus ? asText(status) : "none";
  job.fatalShown = true;
}

function addChunk(event) {
  const hasMime = typeof event.mime === "string" && event.mime !== "";
  const mime = hasMime ? event.mime : "application/octet-stream";
  const isAudio = AUDIO_MEDIA_TYPE.test(mime);
  const blob = new Blob([event.payload], { type: isAudio ? mime : "application/octet-stream" });
  const url = URL.createObjectURL(blob);
  job.blobUrls.push(url);

  const item = document.createElement("li");
  item.className = "chunk";
  item.dataset.seq = String(event.seq);
  const description = document.createElement("span");
  description.className = "chunk-description";
  description.textContent = `#${event.seq} ${mime}, ${formatSize(blob.size)} `;
  const link = document.createElement("a");
  link.href = url;
  const baseType = mime.split(";")[0].trim().toLowerCase();
  link.download = `chunk-${event.seq}${FILE_EXTENSIONS.get(baseType) ?? ".bin"}`;
  link.textContent = "Download";
  item.append(description, link);
  if (isAudio) {
    const player = document.createElement("audio");
    player.controls = true;
    player.preload = "metadata";
    player.src = url;
    item.append(player);
    if (elements.autoplay.checked) {
      job.audioQueue.push(player);
      if (job.playingAudio === null) {
        playNextAudio(job);
      }
    }
  }
  elements.chunks.append(item);
}

// Plays queued audio chunks one after another. A chunk that cannot play (an autoplay policy,
// an undecodable format) is skipped; its player and download link stay in the list.
function playNextAudio(current) {
  const player = current.audioQueue.shift() ?? null;
  current.playingAudio = player;
  if (player === null) {
    return;
  }
  let done = false;
  const next = () => {
    if (!done && job === current) {
      done = true;
      playNextAudio(current);
    }
  };
  player.addEventListener("ended", next, { once: true });
  player.addEventListener("error", next, { once: true });
  player.play().catch(next);
}

function finish(state) {
  job.finished = true;
  clearTimeout(job.resumeTimer);
  setState(state);
  setRunning(false);
  elements.reconnectButton.hidden = true;
}

function handleClose(code, reason) {
  const detail = reason ? `${code}: ${reason}` : `${code}`;
  job.lastClose = detail;
  if (job.finished) {
    setConnection(`closed (${detail})`);
    return;
  }
  const terminalState = TERMINAL_STATE_BY_CLOSE_CODE.get(code);
  if (terminalState !== undefined) {
    // The relay closes a resumed socket of a finished job at once, with the job's state
    // as the reason, when the page already has every event.
    setConnection(`closed (${detail})`);
    if (code === 4000 && !job.fatalShown) {
      showFatal({ message: reason, exit_status: null });
    }
    finish(terminalState);
    return;
  }
  if (job.id !== null && RESUMABLE_CLOSE_CODES.has(code)) {
    scheduleResume(detail);
    return;
  }

  setConnection(`closed (${detail})`);
  if (code === 4400) {
    showFormError(`The relay rejected the request: ${reason}`);
    setState(job.id === null ? "rejected" : "unknown");
  } else if (code === 4429) {
    showFormError(`The relay rejected the job: ${reason}`);
    setState(job.id === null ? "rejected" : "unknown");
  } else if (code === 4404) {
    showFormError(`Job ${job.id} not found on the relay: ${reason}`);
    setState("unknown");
  } else if (job.id === null) {
    showFormError(
      `The connection closed (code ${detail}) before the relay confirmed the job. ` +
        "Check the API key, and that the relay is running.",
    );
    setState("not submitted");
  } else {
    showFormError(`The connection to job ${job.id} closed with code ${detail}.`);
    setState("unknown");
  }
  setRunning(false);
}

function scheduleResume(detail) {
  if (job.resumeAttempts >= MAX_RESUME_ATTEMPTS) {
    setConnection(`closed (${detail})`);
    setState("unknown");
    showFormError(
      `Lost the connection to job ${job.id}: ${MAX_RESUME_ATTEMPTS} attempts to resume failed ` +
        `(last close ${detail}). Events up to seq ${job.lastSeq} are shown. ` +
        "Press Reconnect to try again.",
    );
    elements.submitButton.disabled = false;
    elements.reconnectButton.hidden = false;
    return;
  }
  const backoff = Math.min(RESUME_MAX_DELAY_MS, RESUME_BASE_DELAY_MS * 2 ** job.resumeAttempts);
  // Jitter of ±25% keeps many pages from reconnecting to a restarted relay at the same moment.
  const delay = Math.round(backoff * (0.75 + Math.random() * 0.5));
  job.resumeAttempts += 1;
  setConnection(
    `closed (${detail}); resuming after seq ${job.lastSeq} in ${(delay / 1000).toFixed(1)} s ` +
      `(attempt ${job.resumeAttempts} of ${MAX_RESUME_ATTEMPTS})`,
  );
  job.resumeTimer = setTimeout(resume, delay);
}

function resume() {
  if (job === null || job.finished || job.id === null || job.socket !== null) {
    return;
  }
  openSocket(websocketUrl(`/ws/jobs/${encodeURIComponent(job.id)}?after=${job.lastSeq}`), null);
}

function reconnect() {
  if (job === null || job.finished || job.id === null) {
    return;
  }
  elements.reconnectButton.hidden = true;
  elements.formError.textContent = "";
  job.resumeAttempts = 0;
  storeApiKey();
  setRunning(true);
  resume();
}

async function cancelJob() {
  if (job === null || job.finished || job.id === null) {
    return;
  }
  const current = job;
  elements.cancelButton.disabled = true;
  if (current.socket !== null && current.socket.readyState === WebSocket.OPEN) {
    current.socket.send(JSON.stringify({ type: "cancel" }));
    setConnection("cancel sent");
    return;
  }
  // Between resume attempts there is no open socket, so the cancel goes over HTTP.
  let response;
  try {
    const url = urlWithKey(`/jobs/${encodeURIComponent(current.id)}`);
    response = await fetch(url, { method: "DELETE" });
  } catch (error) {
    showFormError(`Cancel failed: ${error.message}`);
    elements.cancelButton.disabled = current.finished;
    return;
  }
  if (response.status === 202 || response.status === 409) {
    setConnection(response.status === 202 ? "cancel sent" : "the job had already finished");
    return;
  }
  showFormError(`Cancel failed with HTTP ${response.status}.`);
  elements.cancelButton.disabled = current.finished;
}

// ---------------------------------------------------------------------------------------
// Start-up

function checkAllFields() {
  for (const field of formFields) {
    field.check();
  }
}

function start() {
  const ids = {
    apiKey: "api-key",
    keyForm: "key-form",
    templatesStatus: "templates-status",
    form: "job-form",
    templateSelect: "template-select",
    clusterRow: "cluster-row",
    clusterSelect: "cluster-select",
    templateDescription: "template-description",
    fields: "fields",
    submitButton: "submit-button",
    cancelButton: "cancel-button",
    reconnectButton: "reconnect-button",
    formError: "form-error",
    jobId: "job-id",
    jobState: "job-state",
    schedulerId: "scheduler-id",
    jobHost: "job-host",
    connectionState: "connection-state",
    progress: "progress",
    progressPercent: "progress-percent",
    progressMessage: "progress-message",
    fatal: "fatal",
    fatalMessage: "fatal-message",
    fatalExitStatus: "fatal-exit-status",
    tokenText: "token-text",
    logLines: "log-lines",
    logDropped: "log-dropped",
    results: "results",
    completeData: "complete-data",
    chunks: "chunks",
    autoplay: "autoplay",
  };
  for (const [name, id] of Object.entries(ids)) {
    elements[name] = byId(id);
  }

  restoreApiKey();
  elements.apiKey.addEventListener("change", storeApiKey);
  elements.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    storeApiKey();
    loadTemplates();
  });
  elements.templateSelect.addEventListener("change", renderForm);
  // The click comes before the browser validates the form, so custom validity is current
  // when it does. Pressing Enter in a field also clicks the submit button.
  elements.submitButton.addEventListener("click", checkAllFields);
  elements.form.addEventListener("submit", (event) => {
    event.preventDefault();
    submitJob();
  });
  elements.cancelButton.addEventListener("click", cancelJob);
  elements.reconnectButton.addEventListener("click", reconnect);
  loadTemplates();
}

document.addEventListener("DOMContentLoaded", start);
