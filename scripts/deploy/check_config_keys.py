#!/usr/bin/env python3
"""Do the rendered manifests only set configuration keys the `crm` binary knows?

The binary deserializes its configuration with deny_unknown_fields: an unknown key in crm.toml or
in a CRM__SECTION__KEY variable makes it exit 64 at start. The known keys are read from the
binary's own documentation: every key is written as `section.key` in services/platform/src/config.rs.

Usage: check_config_keys.py CONFIG_RS RENDERING.yaml [...]
Unknown crm.toml keys fail (exit 1); unknown CRM__ variables are warned about (they may name keys
the binary is about to gain), each with the rendering that sets it.
"""
import pathlib
import re
import sys
import tomllib

import yaml


def main():
    config_rs = pathlib.Path(sys.argv[1])
    if not config_rs.exists():
        print(f"note: {config_rs} not found; config keys not checked")
        return 0
    known = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", config_rs.read_text()))
    if not known:
        print(f"note: no `section.key` documentation found in {config_rs}; config keys not checked")
        return 0
    failures, warnings, files, envs = [], {}, 0, 0
    for path in map(pathlib.Path, sys.argv[2:]):
        for obj in yaml.safe_load_all(path.read_text()):
            if not isinstance(obj, dict):
                continue
            toml_text = (obj.get("data") or {}).get("crm.toml") if obj.get("kind") == "ConfigMap" else None
            if toml_text is None and obj.get("kind") == "ConfigMap":
                # kustomize configMapGenerator keeps the file name as the key too
                toml_text = next((v for k, v in (obj.get("data") or {}).items() if k.endswith(".toml")), None)
            if toml_text is not None:
                files += 1
                try:
                    doc = tomllib.loads(toml_text)
                except tomllib.TOMLDecodeError as e:
                    failures.append(f"{path.stem}: ConfigMap/{obj['metadata']['name']}: crm.toml is not TOML: {e}")
                    continue
                for section, keys in doc.items():
                    for key in keys if isinstance(keys, dict) else {}:
                        if f"{section}.{key}" not in known:
                            failures.append(f"{path.stem}: ConfigMap/{obj['metadata']['name']}: {section}.{key} is not a key of the binary")
            spec = obj.get("spec") or {}
            tmpl = (spec.get("template") or {}).get("spec") or {}
            for c in tmpl.get("containers") or []:
                for e in c.get("env") or []:
                    m = re.fullmatch(r"CRM__([A-Z0-9_]+?)__([A-Z0-9_]+)", e.get("name", ""))
                    if m:
                        envs += 1
                        key = f"{m.group(1).lower()}.{m.group(2).lower()}"
                        if key not in known:
                            warnings.setdefault(e["name"], set()).add(path.stem)
    for f in failures:
        print(f"VIOLATION {f}")
    for name, where in sorted(warnings.items()):
        print(f"WARN {name} is not (yet) a key of the binary ({', '.join(sorted(where))}): "
              f"it exits 64 on unknown keys until it has one")
    print(f"checked {files} crm.toml files and {envs} CRM__ variables against {len(known)} documented keys")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
