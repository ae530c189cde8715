#!/usr/bin/env bash
# Mutation check of the test suite: applies each small, plausible slip listed in
# scripts/mutations/*.txt (a sign, a factor, an index, a wrong iterate, a swapped solver) to a
# copy of the working tree, rebuilds the tests and runs the ones the slip names; a slip must make
# them fail ("killed"). Not part of CI: it rebuilds once per slip (only the test files that
# hold the slip's tags, when they are tags).
#
#   bash scripts/mutate.sh                 # every slip; exit 1 if one survives
#   bash scripts/mutate.sh --list          # the slips, one per line
#   bash scripts/mutate.sh ID [ID...]      # only these
#
# A slip is one block of a mutation file:
#   @@ <id> | <file from the repository root> | <the tests to run>
#   - <the original line, exactly as it stands, occurring once in the file>
#   + <the line with the slip>
# The tests to run are a Catch test spec when they start with '[' (tags, e.g. "[chl],[lpom]":
# either tag), a ctest -R regex otherwise. The copy and its build live in ${MUTATE_DIR:-/tmp/bilevel-mutants} (built with ccache when it
# is installed, tests and their library only: no examples, benchmarks or MPI; for slips whose
# tests are the python_ ones, the Python module alone, whose comparisons with the C++ trainer
# are skipped there).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import glob, os, re, shutil, subprocess, sys

root = os.getcwd()
work = os.environ.get("MUTATE_DIR", "/tmp/bilevel-mutants")
source, build = os.path.join(work, "src"), os.path.join(work, "build")
test_programs = ["bilevel_tests", "bilevel_openmp_tests"]  # the main suite, the thread-pool tests

def fail(message):
    sys.exit(f"mutate.sh: {message}")

def slips():
    found = []
    for path in sorted(glob.glob("scripts/mutations/*.txt")):
        with open(path, encoding="utf-8") as lines:
            block = None
            for number, line in enumerate(lines, 1):
                line = line.rstrip("\n")
                where = f"{path}:{number}"
                if line.startswith("@@ "):
                    parts = [p.strip() for p in line[3:].split("|", 2)]  # a ctest regex may hold "|"
                    if len(parts) != 3 or not all(parts):
                        fail(f"{where}: expected '@@ id | file | test regex'")
                    block = {"id": parts[0], "file": parts[1], "tests": parts[2], "where": where}
                    found.append(block)
                elif line.startswith("- ") and block is not None and "old" not in block:
                    block["old"] = line[2:]
                elif line.startswith("+ ") and block is not None and "new" not in block:
                    block["new"] = line[2:]
                elif line.strip() and not line.startswith("#"):
                    fail(f"{where}: unexpected line")
    ids = set()
    for slip in found:
        if "old" not in slip or "new" not in slip:
            fail(f"{slip['where']}: a slip needs a '- ' and a '+ ' line")
        if slip["id"] in ids:
            fail(f"{slip['where']}: duplicate id {slip['id']}")
        ids.add(slip["id"])
    return found

def run(command, **options):
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **options)

def targets(slip):
    """What a slip's tests run: the Python module for the python_ tests, else the test programs."""
    return ["bilevel_python"] if slip["tests"].startswith("python") else test_programs

def prepare(needed):
    if os.path.isdir(source):
        shutil.rmtree(source)
    ignore = shutil.ignore_patterns(".git", "build*", "data", "results")
    shutil.copytree(root, source, ignore=ignore, symlinks=True)
    launcher = ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"] if shutil.which("ccache") else []
    configure = run(["cmake", "-S", source, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                     "-DBILEVEL_BUILD_EXAMPLES=OFF", "-DBILEVEL_BUILD_BENCHMARKS=OFF",
                     "-DBILEVEL_WITH_MPI=OFF", "-DBILEVEL_INSTALL=OFF", "-DBILEVEL_PYTHON=ON",
                     "-DBILEVEL_TEST_FILES="]
                    + launcher)
    if configure.returncode != 0:
        fail("cmake configure failed:\n" + configure.stdout[-3000:])
    built = run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2), "--target", *needed])
    if built.returncode != 0:
        fail("the unmutated tests do not build:\n" + built.stdout[-3000:])

def test_files(spec):
    """The test files holding a Catch spec's tags ("" for a ctest regex: every file)."""
    if not spec.startswith("["):
        return ""
    tags = re.findall(r"\[[^\]]+\]", spec)
    names = []
    for path in sorted(glob.glob(os.path.join(source, "tests", "*.cpp"))):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if any(tag in text for tag in tags):
            names.append(os.path.basename(path))
    return ";".join(names)

def select(files, examples=False):
    """Configures the copy's test program to hold only `files` ("" for all of them), with the
    examples (the trainer, which the trainer's tests run) only for a slip in them: every other
    slip would rebuild the trainer for nothing."""
    configured = run(["cmake", "-S", source, "-B", build, f"-DBILEVEL_TEST_FILES={files}",
                      f"-DBILEVEL_BUILD_EXAMPLES={'ON' if examples else 'OFF'}"])
    if configured.returncode != 0:
        fail("cmake configure failed:\n" + configured.stdout[-3000:])

def check(slip):
    path = os.path.join(source, slip["file"])
    try:
        with open(path, encoding="utf-8") as f:
            original = f.read()
    except OSError as error:
        return "error", f"cannot read {slip['file']}: {error.strerror}"
    lines = original.split("\n")
    if lines.count(slip["old"]) != 1:
        return "error", f"the original line occurs {lines.count(slip['old'])} times in {slip['file']}"
    mutated = "\n".join(slip["new"] if l == slip["old"] else l for l in lines)
    with open(path, "w", encoding="utf-8") as f:
        f.write(mutated)
    try:
        select(test_files(slip["tests"]), slip["file"].startswith("examples/"))
        built = run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2), "--target",
                     *targets(slip)])
        if built.returncode != 0:
            return "error", "the slip does not compile (not a plausible slip)"
        if slip["tests"].startswith("["):
            tested = run([os.path.join(build, "tests", "bilevel_tests"), slip["tests"]])
            if "No test cases matched" in tested.stdout:
                return "error", f"no test matches {slip['tests']!r}"
        else:
            tested = run(["ctest", "--test-dir", build, "-R", slip["tests"], "-j",
                          str(os.cpu_count() or 2), "--timeout", "600"])
            if "No tests were found" in tested.stdout:
                return "error", f"no test matches {slip['tests']!r}"
        return ("killed", "") if tested.returncode != 0 else ("survived", "")
    finally:
        with open(path, "w", encoding="utf-8") as f:
            f.write(original)

arguments = sys.argv[1:]
every = slips()
if arguments == ["--list"]:
    for slip in every:
        print(f"{slip['id']}\t{slip['file']}\t{slip['tests']}")
    sys.exit(0)
chosen = [s for s in every if not arguments or s["id"] in arguments]
unknown = set(arguments) - {s["id"] for s in every}
if unknown:
    fail("unknown slip id(s): " + ", ".join(sorted(unknown)))
prepare(sorted({target for slip in chosen for target in targets(slip)}))
counts = {"killed": 0, "survived": 0, "error": 0}
for slip in chosen:
    outcome, detail = check(slip)
    counts[outcome] += 1
    print(f"{outcome:8} {slip['id']}" + (f"  ({detail})" if detail else ""), flush=True)
# Leave the copy's objects matching the unmutated sources for the next run.
select("")
run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2), "--target",
     *sorted({target for slip in chosen for target in targets(slip)})])
print(f"mutate.sh: {counts['killed']} of {len(chosen)} slips killed, {counts['survived']} "
      f"survived, {counts['error']} not applicable")
sys.exit(0 if counts["survived"] == 0 and counts["error"] == 0 else 1)
PY
