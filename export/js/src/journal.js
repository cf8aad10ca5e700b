// Resumable prediction runs (Node): vitlab_edge.journal ported rule for rule, on the same files, so that a run
// started by `vitlab-edge-js predict` and stopped (Ctrl-C, kill -9, out of memory) can be resumed by either CLI,
// and the other way round.
//
// While a run predicts into `out`, each finished record is appended to the journal `.<out name>.partial.jsonl`
// beside it (handed to the OS at once; fsync every SYNC_SECONDS and at close). `out` is written only at the end,
// atomically and in input order, from the earlier records and the journal; then the journal goes. `--resume` reads
// the finished `out` (JSONL, CSV) and every journal file of it (`.<out name>.partial*`), skips the inputs they answer
// (by source), and appends to the journal; a line cut short by a kill is skipped (its input is predicted again).
// A run without --resume refuses to start over a journal that holds records.

import fs from "node:fs";
import path from "node:path";
import {csvRecords, jsonLine, pyDumps} from "./pyjson.js";

export const SYNC_SECONDS = 2.0;

/** A run that cannot start as asked (a journal left by an interrupted run, nothing to resume); one line. */
export class JournalError extends Error {
  constructor(message) { super(message); this.name = "JournalError"; }
}

/** Ctrl-C while recording: what was finished is kept. */
export class Interrupted extends Error {
  constructor() { super("interrupted"); this.name = "Interrupted"; }
}

/** `data` written to `file` atomically: a temp file beside it, fsynced, then renamed (readers never see half). */
export function atomicWrite(file, data) {
  const dir = path.dirname(path.resolve(file));
  fs.mkdirSync(dir, {recursive: true});
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  try {
    const fd = fs.openSync(tmp, "w", 0o666);
    try {
      for (const chunk of typeof data === "string" || ArrayBuffer.isView(data) ? [data] : data) fs.writeSync(fd, chunk);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, {force: true});
    throw e;
  }
}

/** The journal of a run into `out`: `.<name>.partial.jsonl` in the same folder. */
export const journalPath = (out) => path.join(path.dirname(out), `.${path.basename(out)}.partial.jsonl`);

/** Every journal file of `out` (`.<name>.partial*`), sorted. */
export function journalFiles(out) {
  const dir = path.dirname(out), prefix = `.${path.basename(out)}.partial`;
  let names = [];
  try { names = fs.readdirSync(dir); } catch { return []; }
  return names.filter((n) => n.startsWith(prefix)).map((n) => path.join(dir, n))
    .filter((p) => fs.statSync(p, {throwIfNoEntry: false})?.isFile()).sort();
}

/** [records, unreadable lines, byte length up to the last newline] of a journal file. */
export function readJournal(file) {
  const data = fs.readFileSync(file), intact = data.lastIndexOf(0x0a) + 1, records = [];
  let bad = 0;
  for (const line of data.toString("utf8").split("\n")) {
    if (!line.trim()) continue;
    let rec;
    try { rec = JSON.parse(line); } catch { bad++; continue; }
    if (rec && typeof rec === "object" && !Array.isArray(rec) && typeof rec.source === "string") records.push(rec);
    else bad++;
  }
  return [records, bad, intact];
}

/** vitlab_edge.files.read_records: the records of a finished .jsonl or .csv output. */
export function readRecords(file) {
  const ext = path.extname(file);
  if (ext !== ".jsonl" && ext !== ".csv") throw new Error(`output ${file}: use a .jsonl or .csv file name`);
  const text = fs.readFileSync(file, "utf8");
  if (ext === ".csv") return csvRecords(text);
  const out = [];
  text.split("\n").forEach((line, i) => {
    if (!line.trim()) return;
    try { out.push(JSON.parse(line)); } catch { throw new Error(`${file}:${i + 1} is not a JSON record`); }
  });
  return out;
}

/**
 * One prediction run into `out` over inputs named by `keys` (their sources, in input order): ResumableRun of
 * vitlab_edge.journal. `earlier(out)`: the records of a finished `out` (null: a format that does not read back,
 * COCO, resumes from its journal alone).
 */
export class ResumableRun {
  constructor(out, keys, resume, earlier = null) {
    Object.assign(this, {out, keys: [...keys], journal: journalPath(out), done: new Map(), unreadable: 0,
                         foreign: [], start: 0, added: 0, newErrors: 0});
    const files = journalFiles(out);
    if (!resume) {
      if (files.length) this.refuseToStartOver(files);
      return;
    }
    if (fs.statSync(out, {throwIfNoEntry: false})?.isFile()) {
      if (earlier) {
        let recs;
        try { recs = earlier(out); } catch (e) { throw new JournalError(`cannot resume: ${e.message}`); }
        for (const r of recs) {
          if (!("source" in r)) throw new JournalError("cannot resume: 'source'");
          this.done.set(String(r.source), r);
        }
      } else if (!files.length) {
        throw new JournalError(`${out} is finished and has no journal of an interrupted run beside it: nothing to `
          + "resume (run without --resume to predict again)");
      }
    }
    for (const file of files) {
      const [records, bad, intact] = readJournal(file);
      this.unreadable += bad;
      for (const r of records) this.done.set(String(r.source), r);
      if (file === this.journal) {
        if (intact < fs.statSync(file).size) fs.truncateSync(file, intact); // the next record starts a line
      } else this.foreign.push([file, intact]);
    }
  }

  refuseToStartOver(files) {
    const n = files.reduce((acc, f) => acc + readJournal(f)[0].length, 0);
    if (n === 0) { files.forEach((f) => fs.rmSync(f, {force: true})); return; }
    const more = files.length > 1 ? ` and ${files.length - 1} more` : "";
    throw new JournalError(`${n} records of an interrupted run into ${this.out} are kept in ${path.basename(files[0])}${more}: `
      + `pass --resume to continue it, or delete ${more ? "them" : "it"} to start over`);
  }

  /** Positions (in keys) of the inputs no earlier record answers. */
  get todo() {
    this._todo ??= this.keys.flatMap((k, i) => (this.done.has(k) ? [] : [i]));
    return this._todo;
  }

  /** How many inputs earlier records answer. */
  get earlier() { return this.keys.length - this.todo.length; }

  /** Error records among every input's: the earlier ones and this run's. */
  get errors() {
    let n = this.newErrors;
    for (const k of this.keys) {
      const e = this.done.get(k)?.error;
      if (this.done.has(k) && e !== null && e !== undefined && e !== "") n++;
    }
    return n;
  }

  /** Journal this run's records (those of todo, in order, from an async iterable) as each one comes; the count.
   * `stop()` true after a record: throws Interrupted (what was journaled stays). */
  async record(records, stop = () => false) {
    fs.mkdirSync(path.dirname(path.resolve(this.journal)), {recursive: true});
    const fd = fs.openSync(this.journal, "a");
    let synced = performance.now();
    const sync = () => { fs.fsyncSync(fd); synced = performance.now(); };
    try {
      for (const [file, intact] of this.foreign) {
        const data = fs.readFileSync(file).subarray(0, intact);
        fs.writeSync(fd, data);
        sync();
        fs.rmSync(file);
      }
      this.foreign = [];
      this.start = fs.fstatSync(fd).size;
      const todo = this.todo;
      for await (const rec of records) {
        const expected = this.added < todo.length ? this.keys[todo[this.added]] : "no more records";
        if (String(rec.source) !== expected) {
          throw new Error(`record ${this.added} of this run answers ${rec.source}, expected ${expected}`);
        }
        fs.writeSync(fd, jsonLine({...rec, index: todo[this.added]}));
        this.added++;
        if (rec.error !== null && rec.error !== undefined) this.newErrors++;
        if (performance.now() - synced >= SYNC_SECONDS * 1000) sync();
        if (stop()) throw new Interrupted();
      }
    } finally {
      sync();
      fs.closeSync(fd);
      if (fs.statSync(this.journal).size === 0) fs.rmSync(this.journal);
    }
    return this.added;
  }

  /** record(), and when it stops early one line on stderr on what is kept and how to go on; 130 after Ctrl-C. */
  async recordOrReport(records, prog, stop) {
    try {
      await this.record(records, stop);
    } catch (e) {
      if (e instanceof Interrupted) {
        console.error(`${prog}: interrupted: ${this.stopped() ?? "nothing was finished"}`);
        return 130;
      }
      if (this.added) console.error(`${prog}: stopped: ${this.stopped()}`);
      throw e;
    }
    return 0;
  }

  /** Every input's record as a JSONL line, in input order: this run's as journaled, earlier ones with their index. */
  * lines() {
    if (this.added !== this.todo.length) {
      throw new Error(`${this.journal}: ${this.added} records for ${this.todo.length} inputs left to predict`);
    }
    let fresh = [];
    if (this.added) {
      const text = fs.readFileSync(this.journal).subarray(this.start).toString("utf8");
      fresh = text.split("\n").slice(0, this.added).map((l) => `${l}\n`);
    }
    let j = 0;
    for (const [i, key] of this.keys.entries()) {
      const rec = this.done.get(key);
      yield rec === undefined ? fresh[j++] : jsonLine({...rec, index: i});
    }
  }

  /** Every input's record, in input order, with its index. */
  * merged() {
    for (const line of this.lines()) yield JSON.parse(line);
  }

  /** `out` (a .jsonl) from lines(), atomically; the count. */
  writeJsonl() {
    atomicWrite(this.out, [...this.lines()].join(""));
    return this.keys.length;
  }

  /** `out` is written: remove every journal file of it. */
  finish() {
    for (const f of journalFiles(this.out)) fs.rmSync(f, {force: true});
  }

  /** After a failure: one line on what is kept and how to go on, or null when nothing is. */
  stopped() {
    if (!fs.existsSync(this.journal)) return null;
    return `${this.earlier + this.added} of ${this.keys.length} inputs are answered and kept (${this.journal}): `
      + "the same command with --resume predicts only the rest";
  }
}

export {pyDumps};
