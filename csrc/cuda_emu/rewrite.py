#!/usr/bin/env python3
"""Rewrites CUDA sources so a host C++ compiler can build them against the emulator (emu.h).

    rewrite.py OUTDIR FILE.cu|FILE.cuh ...

writes OUTDIR/FILE.cpp (or FILE.cuh), starting with a #line directive so diagnostics and the emulator's
messages name the original file and line. Only three constructs change; the rest is copied verbatim:

- a launch `kernel<<<grid, block[, shmem[, stream]]>>>(args)` becomes
  `::td_emu::Launch("kernel", __PRETTY_FUNCTION__, __FILE__, __LINE__, grid, block[, ...]).run(kernel, args)`;
- after a static `__shared__` declaration, a `::td_emu::SharedNote` per declared name tells the scheduler
  where the array is and how big (limit check, poisoning); `extern __shared__ T name[];` becomes a pointer
  to the launch's dynamic shared memory;
- a kernel with `__launch_bounds__(N, ...)` starts with `::td_emu::check_launch_bounds(N, ...)`.
Line numbers are preserved. Comments and string literals are never rewritten.
"""

from __future__ import annotations

import os
import re
import sys

OPEN = "([{"
CLOSE = ")]}"


def code_mask(src: str) -> str:
    """src with comments, string and character literals replaced by spaces (newlines kept), so that
    searches only see code."""
    out = list(src)
    i, n = 0, len(src)

    def blank(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            blank(i, j)
            i = j
        elif c == "R" and src.startswith('R"', i) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'R"([^()\\ ]{0,16})\(', src[i:])
            if not m:
                i += 1
                continue
            end = src.find(")" + m.group(1) + '"', i)
            j = n if end < 0 else end + len(m.group(1)) + 2
            blank(i, j)
            i = j
        elif c == '"' or (c == "'" and not (i > 0 and src[i - 1].isalnum() and i + 1 < n and src[i + 1].isalnum())):
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            blank(i, min(j + 1, n))
            i = j + 1
        else:
            i += 1
    return "".join(out)


def match_forward(m: str, i: int) -> int:
    """Index just past the bracket that closes the one at m[i]."""
    depth = 0
    for k in range(i, len(m)):
        if m[k] in OPEN:
            depth += 1
        elif m[k] in CLOSE:
            depth -= 1
            if depth == 0:
                return k + 1
    raise SyntaxError(f"unbalanced bracket at offset {i}")


def split_top(s: str, angle: bool = False) -> list[tuple[int, int]]:
    """(start, end) spans of s split at commas outside brackets (and outside <> when angle)."""
    spans, depth, adepth, start = [], 0, 0, 0
    for k, ch in enumerate(s):
        if ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth -= 1
        elif angle and depth == 0 and ch == "<":
            adepth += 1
        elif angle and depth == 0 and ch == ">":
            adepth -= 1
        elif ch == "," and depth == 0 and adepth <= 0:
            spans.append((start, k))
            start = k + 1
    spans.append((start, len(s)))
    return spans


def kernel_start(m: str, i: int) -> int:
    """Start of the kernel expression that ends just before offset i (before `<<<`)."""
    j = i - 1
    while j >= 0 and m[j].isspace():
        j -= 1
    if j >= 0 and m[j] == ">":   # template arguments
        depth = 0
        while j >= 0:
            if m[j] == ">":
                depth += 1
            elif m[j] == "<":
                depth -= 1
                if depth == 0:
                    break
            j -= 1
        j -= 1
        while j >= 0 and m[j].isspace():
            j -= 1
    while True:
        while j >= 0 and (m[j].isalnum() or m[j] == "_"):
            j -= 1
        if j >= 1 and m[j - 1:j + 1] == "::":
            j -= 2
            continue
        return j + 1


def rewrite_launches(src: str, m: str) -> str:
    out, pos = [], 0
    for hit in re.finditer(r"(?<!<)<<<(?!<)", m):
        i = hit.start()
        if i < pos:
            continue
        ks = kernel_start(m, i)
        kernel = src[ks:i].rstrip()
        if not kernel or not re.match(r"[A-Za-z_:]", kernel):
            raise SyntaxError(f"cannot find the kernel before <<< at offset {i}")
        k, depth = i + 3, 0
        while k < len(m):
            if m[k] in OPEN:
                depth += 1
            elif m[k] in CLOSE:
                depth -= 1
            elif depth == 0 and m.startswith(">>>", k):
                break
            k += 1
        else:
            raise SyntaxError(f"no >>> for the launch at offset {i}")
        cfg = src[i + 3:k]
        a = k + 3
        while a < len(m) and m[a].isspace():
            a += 1
        if a >= len(m) or m[a] != "(":
            raise SyntaxError(f"no argument list after >>> at offset {k}")
        b = match_forward(m, a)
        args = src[a + 1:b - 1]
        name = " ".join(kernel.split()).replace("\\", "\\\\").replace('"', '\\"')
        call = f'::td_emu::Launch("{name}", __PRETTY_FUNCTION__, __FILE__, __LINE__, {cfg}).run({kernel}'
        call += (", " + args if args.strip() else args) + ")"
        lost = src[ks:b].count("\n") - call.count("\n")
        call += "\n" * max(lost, 0)
        out.append(src[pos:ks])
        out.append(call)
        pos = b
    out.append(src[pos:])
    return "".join(out)


def decl_name(piece: str) -> str:
    """The declared name in one declarator piece: the identifier before the first top-level '['."""
    depth = 0
    for k, ch in enumerate(piece):
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
        elif ch == "[" and depth == 0:
            piece = piece[:k]
            break
    names = re.findall(r"[A-Za-z_]\w*", piece)
    if not names:
        raise SyntaxError(f"no name in the __shared__ declarator {piece!r}")
    return names[-1]


def rewrite_shared(src: str, m: str) -> str:
    edits = []   # (start, end, replacement)
    for hit in re.finditer(r"\b__shared__\b", m):
        s = hit.start()
        semi = s
        depth = 0
        while semi < len(m):
            ch = m[semi]
            if ch in OPEN:
                depth += 1
            elif ch in CLOSE:
                depth -= 1
            elif ch == ";" and depth == 0:
                break
            semi += 1
        body = src[hit.end():semi]
        before = m[:s].rstrip()
        line = src.count("\n", 0, s) + 1
        if before.endswith("extern") and not (len(before) > 6 and (before[-7].isalnum() or before[-7] == "_")):
            start = len(before) - 6
            decl = re.sub(r"__align__\s*\([^)]*\)", " ", body)
            mm = re.match(r"\s*(.*?)\s*([A-Za-z_]\w*)\s*\[\s*\]\s*$", decl, re.S)
            if not mm:
                raise SyntaxError(f"line {line}: cannot read the extern __shared__ declaration {body!r}")
            elem, name = " ".join(mm.group(1).split()), mm.group(2)
            text = f"{elem}* const {name} = static_cast<{elem}*>(::td_emu::dynamic_shared());"
            text += "\n" * src[start:semi + 1].count("\n")
            edits.append((start, semi + 1, text))
            continue
        notes = []
        mbody = m[hit.end():semi]
        for k, (a, b) in enumerate(split_top(mbody, angle=True)):
            name = decl_name(mbody[a:b])
            notes.append(f" const ::td_emu::SharedNote td_emu_shared_{line}_{s}_{k}(static_cast<void*>(&{name}), "
                         f"sizeof({name}), TD_EMU_SITE);")
        edits.append((semi + 1, semi + 1, "".join(notes)))
    for a, b, text in sorted(edits, reverse=True):
        src = src[:a] + text + src[b:]
    return src


def rewrite_launch_bounds(src: str, m: str) -> str:
    edits = []
    for hit in re.finditer(r"\b__launch_bounds__\s*\(", m):
        p = hit.end() - 1
        q = match_forward(m, p)
        inner = src[p + 1:q - 1]
        a, b = split_top(m[p + 1:q - 1])[0]
        first = inner[a:b].strip()
        # the parameter list, then the body (or ';' for a declaration)
        k = m.find("(", q)
        if k < 0:
            continue
        k = match_forward(m, k)
        while k < len(m) and m[k] not in "{;":
            k += 1
        if k >= len(m) or m[k] == ";":
            continue
        edits.append((k + 1, f" ::td_emu::check_launch_bounds(static_cast<unsigned long long>({first}), TD_EMU_SITE);"))
    for at, text in sorted(edits, reverse=True):
        src = src[:at] + text + src[at:]
    return src


def rewrite(src: str) -> str:
    src = rewrite_launches(src, code_mask(src))
    src = rewrite_launch_bounds(src, code_mask(src))
    return rewrite_shared(src, code_mask(src))


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    outdir = argv[1]
    os.makedirs(outdir, exist_ok=True)
    for path in argv[2:]:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        try:
            text = rewrite(src)
        except SyntaxError as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 1
        base = os.path.basename(path)
        if base.endswith(".cu"):
            base = base[:-3] + ".cpp"
        dest = os.path.join(outdir, base)
        header = f'#line 1 "{os.path.abspath(path)}"\n'
        new = header + text
        if os.path.exists(dest):
            with open(dest, encoding="utf-8") as f:
                if f.read() == new:
                    continue   # unchanged: keep the timestamp, so nothing recompiles
        with open(dest, "w", encoding="utf-8") as f:
            f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
