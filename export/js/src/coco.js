// COCO results JSON from detection records: vitlab_edge.files' coco_image_ids, coco_category_ids, coco_bbox,
// check_coco_inputs and write_coco's rows, rule for rule (the text is pyjson's, so both CLIs write the same bytes).

import {pyDumps} from "./pyjson.js";
import {round3} from "./records.js";

/** Python's PurePosixPath(p).parts: the root "/" first for an absolute path, "" and "." components dropped. */
export function pathParts(p) {
  const parts = String(p).split("/").filter((s) => s !== "" && s !== ".");
  return String(p).startsWith("/") ? ["/", ...parts] : parts;
}

/** source path -> image_id: an image whose file_name (relative to its folder) is the tail of the source's path;
 * the longest such name wins (then the largest id). */
export function cocoImageIds(annotations) {
  const byName = new Map();
  for (const im of annotations.images ?? []) {
    const parts = pathParts(String(im.file_name).replace(/\\/g, "/"));
    if (parts.length) {
      const last = parts[parts.length - 1];
      if (!byName.has(last)) byName.set(last, []);
      byName.get(last).push([parts, Math.trunc(Number(im.id))]);
    }
  }
  return (source) => {
    const parts = pathParts(source);
    let best = null;
    for (const [p, id] of byName.get(parts.length ? parts[parts.length - 1] : "") ?? []) {
      const tail = parts.slice(parts.length - p.length);
      if (tail.length === p.length && tail.every((x, i) => x === p[i])
          && (!best || p.length > best[0] || (p.length === best[0] && id > best[1]))) best = [p.length, id];
    }
    return best ? best[1] : null;
  };
}

/** class_id -> category_id: by name when each label names exactly one category, else by position among the
 * categories sorted by id; throws when neither fits. */
export function cocoCategoryIds(annotations, labels) {
  const cats = [...(annotations.categories ?? [])].sort((a, b) => Number(a.id) - Number(b.id));
  const names = cats.map((c) => String(c.name ?? ""));
  const count = (n) => names.filter((x) => x === n).length;
  if (labels.length && labels.every((n) => count(n) === 1)) return labels.map((n) => Math.trunc(Number(cats[names.indexOf(n)].id)));
  if (cats.length === labels.length || !labels.length) return cats.map((c) => Math.trunc(Number(c.id)));
  throw new Error(`the model's ${labels.length} classes (${labels.slice(0, 5).join(", ")}, ...) match neither the names nor `
    + `the number of the ${cats.length} categories of the annotations`);
}

/** Before predicting: the annotations document (parsed), its categories fit the labels, every source is one of
 * its images; throws naming the first mismatch. `name`: the annotations file, for messages. */
export function checkCocoInputs(sources, doc, labels, name) {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc) || !("images" in doc)) {
    throw new Error(`${name} is not a COCO ground-truth JSON (no 'images')`);
  }
  cocoCategoryIds(doc, labels);
  const imageId = cocoImageIds(doc);
  const unknown = sources.filter((s) => imageId(String(s)) === null);
  if (unknown.length) {
    throw new Error(`${unknown.length} inputs are not images of ${name} (no file_name matches), e.g. ${unknown[0]}`);
  }
}

/** A record's [x1, y1, x2, y2] -> COCO's [x, y, w, h], width and height rounded to 3 decimals. */
export const cocoBbox = ([x1, y1, x2, y2]) => [x1, y1, round3(x2 - x1), round3(y2 - y1)];

/** write_coco's document text from detection records (an iterable) and the count of records read. */
export function cocoResultsText(records, doc, labels, name) {
  const imageId = cocoImageIds(doc), category = cocoCategoryIds(doc, labels), results = [];
  let n = 0;
  for (const rec of records) {
    n++;
    if (rec.error !== null && rec.error !== undefined) continue;
    const iid = imageId(String(rec.source));
    if (iid === null) throw new Error(`${rec.source} is not an image of ${name} (no file_name matches it)`);
    rec.boxes.forEach((box, j) => {
      if (j >= rec.scores.length || j >= rec.class_ids.length) return;
      const k = Math.trunc(Number(rec.class_ids[j]));
      if (!(k >= 0 && k < category.length)) {
        throw new Error(`class id ${k} of ${rec.source} has no category in ${name} (${category.length} categories)`);
      }
      results.push({image_id: iid, category_id: category[k], score: Number(rec.scores[j]), bbox: cocoBbox(box)});
    });
  }
  return {text: pyDumps(results), count: n};
}
