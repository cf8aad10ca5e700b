// Text the way the Python edge kit writes it, so that a file from either CLI has the same bytes and a run started
// by one can be resumed by the other: Python's json.dumps (", " / ": " separators, ASCII only, floats as repr)
// and the csv module's excel dialect (vitlab_edge.files.write_csv / read_records).
//
// JavaScript numbers do not say whether they were ints or floats; the record fields do: FLOAT_KEYS hold floats
// (Python writes 1.0, not 1), every other number is written as an int when it is integral.

/** Record keys whose numbers are Python floats (records, topk entries, COCO results rows). */
export const FLOAT_KEYS = new Set(["prob", "scores", "boxes", "embedding", "score", "bbox"]);

/** Python's repr(float): the shortest round-trip digits, in exponent form when the exponent is < -4 or >= 16. */
export function pyFloat(x) {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "Infinity" : "-Infinity";
  if (x === 0) return Object.is(x, -0) ? "-0.0" : "0.0";
  const [mant, expText] = Math.abs(x).toExponential().split("e"); // shortest digits that read back to x
  const digits = mant.replace(".", ""), exp = Number(expText), sign = x < 0 ? "-" : "";
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  const int = digits.slice(0, exp + 1).padEnd(exp + 1, "0"), frac = digits.slice(exp + 1);
  return `${sign}${int}.${frac || "0"}`;
}

const ESCAPES = {"\\": "\\\\", "\"": "\\\"", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"};

/** Python's json.dumps of a str (ensure_ascii: every character outside ' '...'~' escaped, UTF-16 units). */
export function pyString(s) {
  return `"${s.replace(/[^ -~]|["\\]/g, (c) => ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)}"`;
}

/** Python's repr(str), as error messages quote paths: single quotes unless the text holds one and no double. */
export function pyRepr(s) {
  const q = s.includes("'") && !s.includes("\"") ? "\"" : "'";
  const esc = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", [q]: `\\${q}`};
  return q + s.replace(/[\\\n\r\t'"]|[\x00-\x1f\x7f]/g, (c) => esc[c] ?? (c === "'" || c === "\"" ? c
    : `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`)) + q;
}

/** Python's json.dumps(value) (default separators); numbers under FLOAT_KEYS (at any depth) as floats. */
export function pyDumps(value, float = false) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return float || !Number.isInteger(value) ? pyFloat(value) : String(value);
  if (typeof value === "bigint") return String(value);
  if (typeof value === "string") return pyString(value);
  if (Array.isArray(value) || ArrayBuffer.isView(value)) {
    return `[${Array.from(value, (v) => pyDumps(v, float)).join(", ")}]`;
  }
  return `{${Object.entries(value).map(([k, v]) => `${pyString(k)}: ${pyDumps(v, FLOAT_KEYS.has(k))}`).join(", ")}}`;
}

/** One JSONL line of a record, as vitlab_edge writes it (newline included). */
export const jsonLine = (rec) => `${pyDumps(rec)}\n`;

// --- CSV ----------------------------------------------------------------------------------------------------------
/** CSV cells holding JSON lists (vitlab_edge.files.JSON_COLUMNS). */
export const JSON_COLUMNS = ["topk", "boxes", "scores", "labels", "class_ids", "embedding"];

/** One cell as Python's csv writer gives it (QUOTE_MINIMAL, quotes doubled). */
function csvCell(text) {
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, "\"\"")}"` : text;
}

/** A cell's text as DictWriter writes the value: None -> "", numbers as str(), strings as they are. */
function cellText(key, v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "number") return FLOAT_KEYS.has(key) || !Number.isInteger(v) ? pyFloat(v) : String(v);
  if (typeof v === "boolean") return v ? "True" : "False";
  return String(v);
}

/** vitlab_edge.files.write_csv's text: a header of `fields`, one row per record, lists as JSON, CRLF endings. */
export function csvText(records, fields) {
  const rows = [fields.map(csvCell).join(",")];
  for (const rec of records) {
    rows.push(fields.map((k) => csvCell(JSON_COLUMNS.includes(k)
      ? pyDumps(rec[k] ?? [], FLOAT_KEYS.has(k)) : cellText(k, rec[k]))).join(","));
  }
  return rows.map((r) => `${r}\r\n`).join("");
}

/** Rows of CSV text (the excel dialect: quoted cells may hold commas, quotes and line breaks). */
export function parseCsv(text) {
  const rows = [];
  let row = [], cell = "", quoted = false, i = 0, any = false, atStart = true; // a quote opens a cell only at its start
  while (i < text.length) {
    const c = text[i];
    if (quoted) {
      if (c === "\"" && text[i + 1] === "\"") { cell += "\""; i += 2; continue; }
      if (c === "\"") { quoted = false; i++; continue; }
      cell += c;
      i++;
      continue;
    }
    if (c === "\"" && atStart) { quoted = true; atStart = false; any = true; i++; continue; }
    atStart = false;
    if (c === ",") { row.push(cell); cell = ""; atStart = true; any = true; i++; continue; }
    if (c === "\r" || c === "\n") {
      if (any || cell) { row.push(cell); rows.push(row); }
      row = []; cell = ""; any = false; atStart = true;
      i += c === "\r" && text[i + 1] === "\n" ? 2 : 1;
      continue;
    }
    cell += c;
    any = true;
    i++;
  }
  if (any || cell) { row.push(cell); rows.push(row); }
  return rows;
}

/** vitlab_edge.files.read_records for CSV text: cells as strings, JSON_COLUMNS parsed, an empty error null. */
export function csvRecords(text) {
  const [header, ...rows] = parseCsv(text);
  if (!header) return [];
  return rows.map((cells) => {
    const rec = Object.fromEntries(header.map((k, j) => [k, cells[j] ?? null]));
    for (const k of JSON_COLUMNS) if (k in rec) rec[k] = JSON.parse(rec[k] || "[]");
    rec.error = rec.error || null;
    return rec;
  });
}
