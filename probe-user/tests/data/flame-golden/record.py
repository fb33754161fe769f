#!/usr/bin/env python3
"""Re-records trace/ for tests/flamegraph_golden.rs (root; a reloadscope built with its eBPF programs).

Builds spin from spin.c, runs it from the path the test puts it at, records it for 2 s at 99 Hz and
keeps what the flame stage reads: the user-mode CPU samples of spin (kernel frames differ from one
kernel to the next), each user-stack copy cut to its first 256 bytes (the probe's smallest copy;
spin's frames take 32), the stack ids they use, spin's maps. Then re-bless the golden files:

    python3 probe-user/tests/data/flame-golden/record.py [path/to/reloadscope]
    RELOADSCOPE_BLESS=1 cargo test -p probe-user --test flamegraph_golden
"""

import json, os, shutil, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
INSTALLED = "/tmp/reloadscope-flame-golden/spin"  # keep in step with the test
STACK_BYTES = 256

binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "../../../../target/debug/reloadscope")
subprocess.run(
    ["gcc", "-O1", "-g0", "-fasynchronous-unwind-tables", "-fomit-frame-pointer", "-fno-stack-protector",
     "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,--eh-frame-hdr",
     "-o", os.path.join(HERE, "spin"), os.path.join(HERE, "spin.c")],
    check=True,
)
os.makedirs(os.path.dirname(INSTALLED), exist_ok=True)
shutil.copyfile(os.path.join(HERE, "spin"), INSTALLED)
os.chmod(INSTALLED, 0o755)

with tempfile.TemporaryDirectory() as tmp:
    raw = os.path.join(tmp, "trace")
    spin = subprocess.Popen([INSTALLED], env={}, cwd="/")
    time.sleep(0.3)
    subprocess.run([binary, "record", "--pid", str(spin.pid), "--duration", "2s", "--sample-hz", "99",
                    "--out", raw], check=True)
    spin.kill()
    spin.wait()

    out = os.path.join(HERE, "trace")

    def write_json(name, value):
        with open(os.path.join(out, name), "w") as f:
            f.write(json.dumps(value, indent=2) + "\n")

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.join(out, "maps"))
    stacks_in = open(os.path.join(raw, "samples.bin"), "rb").read()
    stacks_out, events, ids = bytearray(), [], set()
    for line in open(os.path.join(raw, "events.jsonl")):
        e = json.loads(line)
        if (e["type"] != "cpu_sample" or e["tgid"] != spin.pid or not e["user_mode"]
                or e["kstack_id"] >= 0 or e["stack_len"] == 0):
            continue
        n = min(e["stack_len"], STACK_BYTES)
        copy = stacks_in[e["stack_offset"]:e["stack_offset"] + n]
        e["stack_offset"], e["stack_len"] = len(stacks_out), n
        stacks_out += copy
        ids.add(str(e["ustack_id"]))
        events.append(json.dumps(e, separators=(",", ":")))
    open(os.path.join(out, "events.jsonl"), "w").write("".join(l + "\n" for l in events))
    open(os.path.join(out, "samples.bin"), "wb").write(stacks_out)
    stacks = json.load(open(os.path.join(raw, "stacks.json")))
    write_json("stacks.json", {k: v for k, v in stacks.items() if k in ids})
    meta = json.load(open(os.path.join(raw, "meta.json")))
    meta["events"] = len(events)
    write_json("meta.json", meta)
    procs = json.load(open(os.path.join(raw, "processes.json")))
    write_json("processes.json", [p for p in procs if p["pid"] == spin.pid])
    maps = f"maps/{spin.pid}.maps"
    shutil.copyfile(os.path.join(raw, maps), os.path.join(out, maps))
    print(f"{len(events)} samples of pid {spin.pid}, {len(stacks_out)} stack bytes in {out}")
