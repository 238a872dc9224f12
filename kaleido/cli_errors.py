"""One line from jsonargparse's report on a bad command-line option: the option's full name, the value
given, what the option accepts (or why a class could not be used), for ``python -m kaleido``'s ``error:``.

jsonargparse reports a value that fits none of a union's types as a nested tree (the ``model`` union,
the class given by ``class_path``, the option inside it, that option's own union, ...). The innermost
``Parser key`` block is the option at fault; its ``Subtypes`` (or ``Expected`` lines) say what it
accepts. The outermost ``NestedArg`` names the option as it was typed after the group
(``--model.init_args.compile``). A report of another shape gives ``None``: the caller prints it whole.
"""

from __future__ import annotations

import re

_CLASS = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")


def _type_name(text: str) -> str:
    """``<class 'kaleido.nn.unet.UNetSettings'>`` → ``UNetSettings``; ``NoneType`` → ``null``; a Literal → its values."""
    text = text.strip()
    if literal := re.fullmatch(r"typing\.Literal\[(.*)\]", text):
        return f"one of {literal.group(1)}"
    return _CLASS.sub(lambda m: "null" if m.group(1) == "NoneType" else m.group(1), text)


def _split_types(listed: str) -> list[str]:
    """The items of a ``Subtypes: [a, b[c, d], e]`` list, splitting at top-level commas only."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(listed):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(listed[start:i])
            start = i + 1
    items.append(listed[start:])
    return [_type_name(item) for item in items if item.strip()]


def _innermost(lines: list[str]) -> list[str]:
    """The lines of the deepest ``Parser key`` block: that line and those indented under it."""
    keyed = [i for i, line in enumerate(lines) if 'Parser key "' in line]
    if not keyed:
        return lines
    first = keyed[-1]
    indent = len(lines[first]) - len(lines[first].lstrip())
    block = [lines[first]]
    for line in lines[first + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    return block


def _accepted(block: list[str]) -> list[str]:
    text = "\n".join(block)
    if subtypes := re.search(r"Subtypes: \[(.*)\]", text):
        return _split_types(subtypes.group(1))
    found = [_type_name(m.group(1)) for m in re.finditer(r"Expected an? (<class '[\w.]+'>|typing\.Literal\[.*?\])", text)]
    return list(dict.fromkeys(found))


def argument_line(text: str) -> str | None:
    """One line for jsonargparse's report ``text``, or ``None`` for a report of another shape."""
    outer = re.match(r'Parser key "([^"]+)"', text)
    if outer is None:
        return None
    group = outer.group(1)
    nested = re.findall(r"Given value: NestedArg\(key='([^']+)'", text)
    key = nested[-1] if nested else None  # the outermost (printed last): the option as typed after the group
    option = f"--{group}.class_path" if key == "class_path" else f"--{group}.init_args.{key}" if key else f"--{group}"
    classes = re.findall(r"Problem with given class_path '([^']+)':\n\s*(.*)", text)
    if classes:
        name, cause = classes[-1]
        if unknown := re.fullmatch(r"Option '([^']+)' is not accepted", cause.strip()):
            return f"{option}: {name} has no option {unknown.group(1)!r}; `--{group}.help {classes[0][0]}` lists its options"
        if not cause.startswith("Parser key"):  # the class itself could not be used (not found, not a subclass)
            return f"{option}: {name}: {cause.strip().rstrip('.')}"
    block = _innermost(text.splitlines())
    given = [g for g in re.findall(r"(?:Given|Got) value: (.*)", "\n".join(block)) if not g.startswith("NestedArg(")]
    if not given:  # e.g. a class_path that names no subclass: the first error says it
        first = re.search(r"Errors:\n\s*- (.*)", text)
        return f"{option}: {first.group(1).strip().rstrip('.')}" if first else None
    accepted = _accepted(block)
    where = f" by {classes[-1][0]}" if classes else ""
    return f"{option}: {given[0]!r} is not accepted{where}" + (f"; expected {' or '.join(accepted)}" if accepted else "")


__all__ = ["argument_line"]
