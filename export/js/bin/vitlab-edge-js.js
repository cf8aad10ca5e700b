#!/usr/bin/env node
// vitlab-edge-js: the Node twin of `vitlab-edge` (the Python edge kit's CLI): same records, same output files, same
// journal (a run either one started can be resumed by the other). See src/cli.js.
//
//   vitlab-edge-js predict model.onnx photos/ more.jpg list.txt --out preds.jsonl   # or preds.csv
//   vitlab-edge-js predict model.onnx photos/ --out preds.jsonl --resume            # after Ctrl-C / kill: the rest
//   vitlab-edge-js predict detector.onnx val/ --out results.json --format coco --annotations val.json
//   vitlab-edge-js sample generator.onnx --labels 0 3 Bag --noise noise.f32 --out images.u8 [--steps N]
//   vitlab-edge-js info model.onnx
//   vitlab-edge-js inputs model.onnx images... --out inputs.u8   (the uint8 model inputs, concatenated: for checks)

import {main} from "../src/cli.js";

process.exitCode = await main(process.argv.slice(2));
