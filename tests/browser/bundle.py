"""Bundle the real @fal-ai/client (CommonJS) from tests/js/node_modules into one browser
script, so a test page can use it offline without a bundler: every module reachable through
`require("...")` is wrapped in a function, and a small `require` resolves between them."""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["bundle_fal_client"]

_REQUIRE = re.compile(r"""require\(["']([^"']+)["']\)""")
_BARE = {
    "@fal-ai/client": "@fal-ai/client/src/index.js",
    "@msgpack/msgpack": "@msgpack/msgpack/dist.cjs/index.cjs",
    "eventsource-parser": "eventsource-parser/dist/index.cjs",
    "robot3": "robot3/dist/machine.js",
}
_RUNTIME = """
window.process = window.process || { env: {} };
window.requireFal = (function () {
  const cache = {};
  function load(path) {
    if (cache[path]) return cache[path].exports;
    const module = { exports: {} };
    cache[path] = module;
    MODULES[path](module.exports, (spec) => load(RESOLVE[path + "\\u0000" + spec]), module);
    return module.exports;
  }
  return () => load(ENTRY);
})();
"""


def _resolve(root: Path, current: str, spec: str) -> str:
    if spec in _BARE:
        return _BARE[spec]
    base = (root / current).parent / spec
    for candidate in (base, base.with_name(base.name + ".js"), base / "index.js"):
        if candidate.is_file():
            return candidate.resolve().relative_to(root.resolve()).as_posix()
    raise FileNotFoundError(f"cannot resolve {spec!r} from {current}")


def bundle_fal_client(node_modules: Path) -> str:
    """One self-contained script defining `window.requireFal()`."""
    entry = _BARE["@fal-ai/client"]
    modules: dict[str, str] = {}
    resolved: dict[str, str] = {}
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in modules:
            continue
        source = (node_modules / path).read_text(encoding="utf-8")
        if path.endswith(".json"):
            modules[path] = f"module.exports = {source};"
            continue
        modules[path] = source
        for spec in _REQUIRE.findall(source):
            target = _resolve(node_modules, path, spec)
            resolved[f"{path}\0{spec}"] = target
            todo.append(target)
    parts = ["(function () {", "const MODULES = {};"]
    for path, source in modules.items():
        parts.append(f"MODULES[{json.dumps(path)}] = function (exports, require, module) {{\n"
                     f"{source}\n}};")
    parts.append(f"const RESOLVE = {json.dumps(resolved)};")
    parts.append(f"const ENTRY = {json.dumps(entry)};")
    parts.append(_RUNTIME)
    parts.append("})();")
    return "\n".join(parts)
