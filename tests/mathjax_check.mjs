// Renders TeX with MathJax under Node.js, as the docs site renders it in the browser, and reports
// every TeX error. Run by tests/test_docs.py, which extracts the formulas from the built site.
//
//   node tests/mathjax_check.mjs PREFIX FORMULAS.json
//
// PREFIX is a folder whose node_modules holds the `mathjax` package (the bundled components the
// site loads from the CDN). FORMULAS.json is {"config": {...}, "pages": {page: [[tex, display]]}}:
// `config` is the site's own `window.MathJax` configuration, if it sets one. Prints one JSON line:
// {"version": "4.1.3", "checked": N, "errors": [{"page", "tex", "display", "message"}]}.
import {createRequire} from 'node:module';
import {readFileSync} from 'node:fs';
import {join} from 'node:path';

const [prefix, input] = process.argv.slice(2);
const require = createRequire(join(prefix, 'package.json'));
const MathJax = require('mathjax');
const {version} = require('mathjax/package.json');
const {config = {}, pages} = JSON.parse(readFileSync(input, 'utf8'));

// The site's TeX input (the `input/tex` component of tex-mml-chtml.js, and its configuration),
// less `noundefined`: that package draws an undefined macro as red text instead of raising an
// error, and a reader sees red either way.
const tex = {...(config.tex ?? {})};
if (Array.isArray(tex.packages)) {
  tex.packages = tex.packages.filter((name) => name !== 'noundefined');
} else {
  tex.packages = {...(tex.packages ?? {})};
  tex.packages['[-]'] = [...(tex.packages['[-]'] ?? []), 'noundefined'];
}
tex.formatError = (jax, error) => {
  throw error;
};
const load = ['input/tex', ...(config.loader?.load ?? [])];
await MathJax.init({...config, loader: {...(config.loader ?? {}), load}, tex, startup: {typeset: false}});

const errors = [];
let checked = 0;
for (const [page, formulas] of Object.entries(pages)) {
  MathJax.texReset(); // each page is its own document: labels and \newcommand do not carry over
  for (const [source, display] of formulas) {
    checked += 1;
    let message = null;
    try {
      const mml = await MathJax.tex2mmlPromise(source, {display});
      const merror = mml.match(/<merror[^>]*>[\s\S]*?<\/merror>/);
      if (merror) message = merror[0].replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim();
    } catch (error) {
      message = error.message ?? String(error);
    }
    if (message !== null) errors.push({page, tex: source, display, message});
  }
}
process.stdout.write(JSON.stringify({version, checked, errors}) + '\n');
