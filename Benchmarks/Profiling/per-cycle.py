#!/usr/bin/env python3
"""Per-cycle instruction costs by function, from two callgrind runs of CycleProfile.

    per-cycle.py LOW.out HIGH.out ITERATIONS_DIFFERENCE [--inclusive] [--by-object] [--top N]

Runs callgrind_annotate on both files and prints (Ir(HIGH) - Ir(LOW)) / ITERATIONS_DIFFERENCE
for each function (or, with --by-object, for each shared object: hiredis, malloc, the Swift
runtime, …), largest first: what one more cycle costs, with start-up cancelled out.
Names are demangled with `swift demangle --simplified`.
"""
import re
import subprocess
import sys


def costs(path, inclusive, by_object=False):
    command = ["callgrind_annotate", "--threshold=100"]
    if inclusive:
        command.append("--inclusive=yes")
    output = subprocess.run(command + [path], capture_output=True, text=True, check=True).stdout
    result = {}
    for line in output.splitlines():
        match = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)$", line)
        if not match or "PROGRAM TOTALS" in line:
            continue
        if by_object:
            found = re.search(r"\[([^\]]*)\]$", match.group(2))
            name = found.group(1).split("/")[-1] if found else "(unknown)"
            if "libc.so" in name and "malloc" in match.group(2):
                name = "libc malloc/free"
        else:
            name = re.sub(r"\s+\[[^\]]*\]$", "", match.group(2))
        result[name] = result.get(name, 0) + int(match.group(1).replace(",", ""))
    return result


def main():
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    inclusive = "--inclusive" in sys.argv
    by_object = "--by-object" in sys.argv
    top = 40
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1])
        arguments.remove(str(top))
    low, high, iterations = arguments[0], arguments[1], int(arguments[2])
    before, after = costs(low, inclusive, by_object), costs(high, inclusive, by_object)
    rows = sorted(((after.get(n, 0) - before.get(n, 0)) / iterations, n) for n in set(before) | set(after))
    rows.reverse()
    names = "\n".join(n for _, n in rows[:top])
    demangled = subprocess.run(["swift", "demangle", "--simplified"], input=names, capture_output=True, text=True).stdout.splitlines()
    for (cost, _), name in zip(rows[:top], demangled):
        print(f"{cost:10.0f}  {name[:160]}")


if __name__ == "__main__":
    main()
