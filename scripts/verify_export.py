#!/usr/bin/env python3
"""Independent verifier for a chio-agent receipt log export (JSON Lines) or evidence package.

    chio-agent receipts export --receipts receipts.db --format jsonl > log.jsonl
    python3 scripts/verify_export.py [--key HEX] log.jsonl

    chio-agent receipts export --receipts receipts.db --package DIR
    python3 scripts/verify_export.py [--key HEX] DIR

A package (chio-agent.evidence_package.v1, docs/receipt-log.md) is checked
whole: the manifest's signature by its exporter_key, every file's size and
SHA-256 against the manifest (none missing, none extra), the counts, the log
id against the kernel key, then its receipts and checkpoints exactly as an
export's, and every inclusion proof against its checkpoint. A rotated log's
package carries key rotation statements (chio-agent.key_rotation.v1): each
is checked (both keys' signatures, the log id), and the key it hands the log
to is the one expected from its first_seq on, only if the statement comes
from the key signing the log then and is anchored to the last checkpoint.

It shares no code with chio-agent: canonical JSON (RFC 8785), receipt ids and
signatures (chio.receipt.v1), Merkle roots and the checkpoint chain
(chio.checkpoint_statement.v2) are recomputed here from the format alone.
DNS query receipts (tool_name "dns.query", docs/receipts.md) are checked for
what they claim as well: a refused query told the workload no addresses, an
answered one told it only addresses, and an aggregated one says how many.
Needs Python 3 and the 'cryptography' package (Debian: python3-cryptography)
for Ed25519. Exits 0 when every check holds, 1 naming the first bad line and
sequence number otherwise, 3 when it cannot run.
"""

import argparse
import hashlib
import ipaddress
import json
import os
import sys

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover
    print("verify_export: the 'cryptography' package is required (apt-get install python3-cryptography)", file=sys.stderr)
    sys.exit(3)

CHECKPOINT_SCHEMA = "chio.checkpoint_statement.v2"
ROTATION_SCHEMA = "chio-agent.key_rotation.v1"
ROTATION_FIELDS = {"schema", "log_id", "previous_key", "new_key", "first_seq", "anchor_checkpoint_seq",
                   "anchor_checkpoint_sha256", "issued_at"}


class Defect(Exception):
    pass


# ---- RFC 8785 canonical JSON


def _num(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)  # Chio writes integers exactly
    if v != v or v in (float("inf"), float("-inf")):
        raise Defect("non-finite number")
    if v == 0:
        return "0"
    sign = "-" if v < 0 else ""
    r = repr(abs(v))  # shortest round-trip digits
    mant, _, exp = r.partition("e")
    exp = int(exp) if exp else 0
    ip, _, fp = mant.partition(".")
    if fp == "0":
        fp = ""
    digits = (ip + fp).lstrip("0")
    lead = len(ip + fp) - len((ip + fp).lstrip("0"))
    n = len(ip) + exp - lead  # value = 0.digits * 10^n
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        s = digits + "0" * (n - k)
    elif 0 < n <= 21:
        s = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        s = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        es = ("+" if e >= 0 else "-") + str(abs(e))
        s = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + es
    return sign + s


def canon(v):
    if v is None:
        return "null"
    if isinstance(v, (bool, int, float)):
        return _num(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(canon(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v.keys(), key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canon(v[k]) for k in keys) + "}"
    raise Defect("unsupported value %r" % (v,))


def cbytes(v):
    return canon(v).encode("utf-8")


def _no_dupes(pairs):
    d = {}
    for k, val in pairs:
        if k in d:
            raise Defect("duplicate key %r" % k)
        d[k] = val
    return d


def parse(line):
    return json.loads(line, object_pairs_hook=_no_dupes)


# ---- hashing and signatures


def sha256_hex(b):
    return hashlib.sha256(b).hexdigest()


def leaf(b):
    return hashlib.sha256(b"\x00" + b).digest()


def node(l, r):
    return hashlib.sha256(b"\x01" + l + r).digest()


def merkle_root(leaves):
    level = list(leaves)
    while len(level) > 1:
        nxt = [node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])  # odd last node carried up
        level = nxt
    return level[0]


def hexfield(v, n, what):
    if not isinstance(v, str) or len(v) != n or v != v.lower():
        raise Defect("%s is not %d lowercase hex digits" % (what, n))
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise Defect("%s is not hex" % what)


def ed25519_ok(key_hex, sig_hex, msg, what):
    key = hexfield(key_hex, 64, what + " key")
    sig = hexfield(sig_hex, 128, what + " signature")
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, msg)
    except InvalidSignature:
        raise Defect(what + " signature does not verify")


def check_receipt(r, key):
    if not isinstance(r, dict):
        raise Defect("receipt is not an object")
    for f in ("id", "timestamp", "tool_server", "tool_name", "action", "receipt_kind", "boundary_class",
              "trust_level", "kernel_key", "signature"):
        if f not in r:
            raise Defect("receipt lacks %s" % f)
    if key is not None and r["kernel_key"] != key:
        raise Defect("receipt signed by %s, expected %s" % (r["kernel_key"], key))
    body = {k: v for k, v in r.items() if k not in ("id", "signature")}
    if sha256_hex(cbytes(body)) != r["id"]:
        raise Defect("receipt id does not match its body")
    params = r["action"].get("parameters", {}) if isinstance(r["action"], dict) else None
    if sha256_hex(cbytes(params)) != r["action"].get("parameter_hash"):
        raise Defect("parameter_hash does not match parameters")
    kind, boundary, trust = r["receipt_kind"], r["boundary_class"], r["trust_level"]
    want = {"mediated_decision": ("prevent", "mediated", True),
            "trace_observation": ("detect_only", "verified", False),
            "advisory_evaluation": ("advisory_only", "advisory", False)}.get(kind)
    if want is None or (boundary, trust) != want[:2]:
        raise Defect("receipt kind %s does not agree with boundary %s and trust %s" % (kind, boundary, trust))
    if want[2] != ("decision" in r) or want[2] == ("observation_outcome" in r):
        raise Defect("receipt kind %s has the wrong decision/observation_outcome" % kind)
    ed25519_ok(r["kernel_key"], r["signature"], cbytes({"body": body, "id": r["id"]}), "receipt")
    if r["tool_name"] == DNS_TOOL:
        check_dns(r)


DNS_TOOL = "dns.query"
EGRESS_SERVER = "chio-agent/egress"
DNS_REFUSALS = ("NXDOMAIN", "REFUSED", "SERVFAIL")


def check_dns(r):
    """The claims of a DNS query receipt, beyond its signature."""
    if r["tool_server"] != EGRESS_SERVER:
        raise Defect("dns.query receipt from tool_server %r" % r["tool_server"])
    p = r["action"].get("parameters")
    if not isinstance(p, dict) or p.get("transport") not in ("udp", "tcp"):
        raise Defect("dns.query receipt: transport is neither udp nor tcp")
    for f in ("target", "ip", "port"):
        if f not in p:
            raise Defect("dns.query receipt lacks parameters.%s" % f)
    try:
        ipaddress.ip_address(p["ip"])
    except ValueError:
        raise Defect("dns.query receipt: ip %r is not an address" % p["ip"])
    if "qname" in p and p["target"] != p["qname"]:
        raise Defect("dns.query receipt: target %r is not the qname %r" % (p["target"], p["qname"]))
    if ("qtype" in p) != ("qname" in p):
        raise Defect("dns.query receipt: a qname without a qtype or the reverse")
    meta = json.loads(r["metadata"]) if isinstance(r.get("metadata"), str) else r.get("metadata") or {}
    if not isinstance(meta, dict) or meta.get("schema") != "chio-agent.egress.v1":
        raise Defect("dns.query receipt: metadata schema %r" % (meta.get("schema") if isinstance(meta, dict) else meta))
    d = meta.get("dns", {})
    verdict = r["decision"].get("verdict")
    answers = d.get("answers", [])
    for a in answers:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise Defect("dns.query receipt: answer %r is not an address" % a)
    if verdict == "deny":
        if answers:
            raise Defect("dns.query receipt: a refused query with answers %s" % answers)
        if d.get("rcode", "REFUSED") not in DNS_REFUSALS:
            raise Defect("dns.query receipt: a refused query answered %s" % d.get("rcode"))
    elif verdict == "allow":
        if "qname" not in p:
            raise Defect("dns.query receipt: an allowed query with no qname")
        if meta.get("attempts", 1) != 1:
            raise Defect("dns.query receipt: an allowed query stands for %s" % meta.get("attempts"))
        if answers and d.get("rcode") != "NOERROR":
            raise Defect("dns.query receipt: answers with rcode %s" % d.get("rcode"))
    else:
        raise Defect("dns.query receipt: verdict %r" % verdict)
    att = meta.get("attempts", 1)
    if not isinstance(att, int) or att < 1:
        raise Defect("dns.query receipt: attempts %r" % att)


def check_root(v, what):
    if not isinstance(v, str) or not v.startswith("0x"):
        raise Defect("%s is not 0x-prefixed" % what)
    return hexfield(v[2:], 64, what)


def check_rotation(st, log_id):
    """A key rotation statement on its own: form, log id, both signatures."""
    if not isinstance(st, dict) or set(st) != {"body", "previous_key_signature", "new_key_signature"}:
        raise Defect("not a {body, previous_key_signature, new_key_signature} statement")
    b = st["body"]
    if not isinstance(b, dict) or set(b) != ROTATION_FIELDS:
        raise Defect("unexpected fields")
    if b["schema"] != ROTATION_SCHEMA:
        raise Defect("schema %r, want %r" % (b["schema"], ROTATION_SCHEMA))
    if b["log_id"] != log_id:
        raise Defect("statement is for log %s, the package's is %s" % (b["log_id"], log_id))
    for f in ("first_seq", "anchor_checkpoint_seq", "issued_at"):
        if not isinstance(b[f], int) or isinstance(b[f], bool):
            raise Defect("%s is not an integer" % f)
    if b["first_seq"] < 2 or b["anchor_checkpoint_seq"] < 1 or b["previous_key"] == b["new_key"]:
        raise Defect("from seq %s anchored to checkpoint %s, %s to itself?" % (b["first_seq"], b["anchor_checkpoint_seq"], b["new_key"]))
    hexfield(b["anchor_checkpoint_sha256"], 64, "anchor_checkpoint_sha256")
    ed25519_ok(b["previous_key"], st["previous_key_signature"], cbytes(b), "previous_key")
    ed25519_ok(b["new_key"], st["new_key_signature"], cbytes(b), "new_key")


def verify(lines, key, rotations=None):
    """Checks an export's lines. rotations maps a first_seq to the checked
    key rotation statement bodies that take effect there, in order."""
    next_seq, batch, cps = 1, [], 0
    prev_sha, chain = None, []
    first_key = key
    rotations = dict(rotations or {})
    log_id = None  # an export's log id: its first key's
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line:
            continue
        try:
            obj = parse(line)
        except (ValueError, Defect) as e:
            raise Defect("line %d: not JSON: %s" % (lineno, e))
        if cbytes(obj).decode("utf-8") != line:
            raise Defect("line %d: not canonical JSON" % lineno)
        kind = obj.get("kind")
        if kind == "receipt":
            seq = obj.get("seq")
            if seq != next_seq:
                raise Defect("line %d: receipt seq %s, expected seq %d (missing or out of order)" % (lineno, seq, next_seq))
            for rb in rotations.pop(seq, []):
                where = "line %d: key rotation to %s from seq %d" % (lineno, rb["new_key"], seq)
                if batch:
                    raise Defect("%s: a new key starts a batch; seq %d is inside one" % (where, seq))
                if rb["previous_key"] != first_key:
                    raise Defect("%s: previous_key %s does not sign the log (its key is %s)" % (where, rb["previous_key"], first_key))
                if rb["anchor_checkpoint_seq"] != cps or rb["anchor_checkpoint_sha256"] != prev_sha:
                    raise Defect("%s: anchored to checkpoint %d, not the last one (%d)" % (where, rb["anchor_checkpoint_seq"], cps))
                first_key = key = rb["new_key"]
            try:
                check_receipt(obj["receipt"], first_key)
            except Defect as e:
                raise Defect("line %d: receipt seq %d: %s" % (lineno, seq, e))
            if first_key is None:
                first_key = obj["receipt"]["kernel_key"]
            batch.append(leaf(cbytes(obj["receipt"])))
            next_seq += 1
        elif kind == "checkpoint":
            cp = obj.get("checkpoint", {})
            b = cp.get("body", {})
            cps += 1
            where = "line %d: checkpoint %d" % (lineno, cps)
            fields = {"schema", "checkpoint_seq", "batch_start_seq", "batch_end_seq", "tree_size", "merkle_root",
                      "issued_at", "kernel_key", "chain_root"}
            if set(cp) != {"body", "signature"} or not fields <= set(b) or not set(b) <= fields | {"previous_checkpoint_sha256"}:
                raise Defect("%s: unexpected fields" % where)
            if b["schema"] != CHECKPOINT_SCHEMA or b["checkpoint_seq"] != cps:
                raise Defect("%s: schema %s, checkpoint_seq %s" % (where, b["schema"], b["checkpoint_seq"]))
            start = next_seq - len(batch)
            if b["batch_start_seq"] != start or b["batch_end_seq"] != next_seq - 1 or b["tree_size"] != len(batch) or not batch:
                raise Defect("%s: covers seq %s-%s (%s), the receipts before it are seq %d-%d" % (
                    where, b["batch_start_seq"], b["batch_end_seq"], b["tree_size"], start, next_seq - 1))
            if check_root(b["merkle_root"], "merkle_root") != merkle_root(batch):
                raise Defect("%s: merkle_root does not match receipts %d-%d" % (where, start, next_seq - 1))
            if b.get("previous_checkpoint_sha256") != prev_sha:
                raise Defect("%s: previous_checkpoint_sha256 does not chain to checkpoint %d" % (where, cps - 1))
            chain.append(leaf(cbytes({"checkpoint_seq": cps, "batch_start_seq": b["batch_start_seq"],
                                      "batch_end_seq": b["batch_end_seq"], "merkle_root": b["merkle_root"]})))
            if check_root(b["chain_root"], "chain_root") != merkle_root(chain):
                raise Defect("%s: chain_root does not match checkpoints 1-%d" % (where, cps))
            if key is not None and b["kernel_key"] != key:
                raise Defect("%s: signed by %s, expected %s" % (where, b["kernel_key"], key))
            try:
                ed25519_ok(b["kernel_key"], cp["signature"], cbytes(b), "checkpoint")
            except Defect as e:
                raise Defect("%s: %s" % (where, e))
            prev_sha = sha256_hex(cbytes(b))
            batch = []
        elif kind == "rotation":
            # A rotated log's export: the statement right before the first
            # receipt the new key signs, for the log of its first key.
            st = obj.get("rotation")
            if set(obj) != {"kind", "rotation"} or first_key is None:
                raise Defect("line %d: key rotation: unexpected fields, or before any receipt" % lineno)
            if log_id is None:
                log_id = "local-log-" + sha256_hex(hexfield(first_key, 64, "kernel key"))
            try:
                check_rotation(st, log_id)
            except Defect as e:
                raise Defect("line %d: key rotation: %s" % (lineno, e))
            if st["body"]["first_seq"] != next_seq:
                raise Defect("line %d: key rotation from seq %s, but the next receipt is seq %d" % (lineno, st["body"]["first_seq"], next_seq))
            rotations.setdefault(next_seq, []).append(st["body"])
        else:
            raise Defect("line %d: unknown kind %r" % (lineno, kind))
    if rotations:
        raise Defect("key rotation from seq %d: no receipt there" % min(rotations))
    return next_seq - 1, cps, len(batch)


# ---- evidence packages

PACKAGE_SCHEMA = "chio-agent.evidence_package.v1"
PACKAGE_FILES = ("checkpoints.jsonl", "proofs.jsonl", "receipts.jsonl")
ROTATIONS_FILE = "rotations.jsonl"  # only in a rotated log's package


def read_lines(data, name):
    if not data:
        return []
    if not data.endswith(b"\n"):
        raise Defect("%s does not end with a newline" % name)
    out = []
    for i, raw in enumerate(data[:-1].split(b"\n"), 1):
        try:
            obj = parse(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, Defect) as e:
            raise Defect("%s line %d: not JSON: %s" % (name, i, e))
        if cbytes(obj) != raw:
            raise Defect("%s line %d: not canonical JSON" % (name, i))
        out.append(obj)
    return out


def root_from_path(lf, index, size, path):
    if size == 0 or index >= size:
        raise Defect("leaf %d outside tree of %d" % (index, size))
    h, used, width = lf, 0, size
    while width > 1:
        if (index ^ 1) < width:
            if used >= len(path):
                raise Defect("audit path too short")
            sib = check_root(path[used], "audit path hash")
            h = node(h, sib) if index % 2 == 0 else node(sib, h)
            used += 1
        index //= 2
        width = (width + 1) // 2
    if used != len(path):
        raise Defect("audit path has %d extra hashes" % (len(path) - used))
    return h


def verify_package(d, key):
    with open(os.path.join(d, "manifest.json"), "rb") as f:
        raw = f.read()
    try:
        sm = parse(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, Defect) as e:
        raise Defect("manifest: not JSON: %s" % e)
    if cbytes(sm) + b"\n" != raw or set(sm) != {"body", "signature"}:
        raise Defect("manifest is not canonical {body, signature}")
    m = sm["body"]
    if m.get("schema") != PACKAGE_SCHEMA:
        raise Defect("manifest schema %r, want %r" % (m.get("schema"), PACKAGE_SCHEMA))
    ed25519_ok(m["exporter_key"], sm["signature"], cbytes(m), "manifest")
    kernel_key = m["kernel_key"]
    if key is not None and kernel_key != key:
        raise Defect("package is of kernel key %s, expected %s" % (kernel_key, key))
    if m["log_id"] != "local-log-" + sha256_hex(hexfield(kernel_key, 64, "kernel_key")):
        raise Defect("log_id %s does not belong to kernel_key %s" % (m["log_id"], kernel_key))
    listed = sorted(f["name"] for f in m["files"])
    if listed not in (sorted(PACKAGE_FILES), sorted(PACKAGE_FILES + (ROTATIONS_FILE,))):
        raise Defect("manifest lists %s, want %s (and %s after a key rotation)" % (listed, sorted(PACKAGE_FILES), ROTATIONS_FILE))
    extra = set(os.listdir(d)) - set(listed) - {"manifest.json"}
    if extra:
        raise Defect("files not in the manifest: %s" % sorted(extra))
    data = {}
    for f in m["files"]:
        with open(os.path.join(d, f["name"]), "rb") as fh:
            b = fh.read()
        if len(b) != f["size"] or sha256_hex(b) != f["sha256"]:
            raise Defect("%s: %d bytes, sha256 %s; the manifest says %d bytes, sha256 %s" % (
                f["name"], len(b), sha256_hex(b), f["size"], f["sha256"]))
        data[f["name"]] = b
    cps = read_lines(data["checkpoints.jsonl"], "checkpoints.jsonl")
    recs = read_lines(data["receipts.jsonl"], "receipts.jsonl")
    proofs = read_lines(data["proofs.jsonl"], "proofs.jsonl")
    rots = read_lines(data.get(ROTATIONS_FILE, b""), ROTATIONS_FILE)
    c = m["counts"]
    if len(rots) != c.get("rotations", 0) or (rots and "rotations" not in c):
        raise Defect("%s holds %d key rotation statements; the manifest counts %s" % (ROTATIONS_FILE, len(rots), c.get("rotations", 0)))
    rotations = {}
    for i, st in enumerate(rots, 1):
        try:
            check_rotation(st, m["log_id"])
        except Defect as e:
            raise Defect("%s line %d: key rotation: %s" % (ROTATIONS_FILE, i, e))
        rotations.setdefault(st["body"]["first_seq"], []).append(st["body"])
    if (len(recs), len(cps), len(proofs)) != (c["receipts"], c["checkpoints"], c["proofs"]):
        raise Defect("files hold %d receipts, %d checkpoints, %d proofs; the manifest counts %d, %d, %d" % (
            len(recs), len(cps), len(proofs), c["receipts"], c["checkpoints"], c["proofs"]))
    # The receipts and checkpoints as an export's lines, checked as one.
    lines, ri = [], 0
    for cp in cps:
        end = cp.get("body", {}).get("batch_end_seq")
        while ri < len(recs) and recs[ri].get("seq", 0) <= (end or 0):
            if set(recs[ri]) != {"seq", "receipt"}:
                raise Defect("receipts.jsonl line %d: unexpected fields" % (ri + 1))
            lines.append(cbytes({"kind": "receipt", "seq": recs[ri]["seq"], "receipt": recs[ri]["receipt"]}).decode("utf-8"))
            ri += 1
        lines.append(cbytes({"kind": "checkpoint", "checkpoint": cp}).decode("utf-8"))
    if ri != len(recs):
        raise Defect("receipts.jsonl: %d receipts after the last checkpoint" % (len(recs) - ri))
    n, ncp, unsealed = verify(lines, kernel_key, rotations)
    if unsealed:
        raise Defect("%d receipts not sealed by a checkpoint" % unsealed)
    if cps and cps[0]["body"]["kernel_key"] != kernel_key:
        raise Defect("checkpoint 1 signed by %s, the manifest names %s" % (cps[0]["body"]["kernel_key"], kernel_key))
    # Every inclusion proof against its checkpoint.
    if len(proofs) != len(recs):
        raise Defect("%d proofs for %d receipts" % (len(proofs), len(recs)))
    by_seq = {cp["body"]["checkpoint_seq"]: cp["body"] for cp in cps}
    for i, (p, r) in enumerate(zip(proofs, recs), 1):
        where = "proofs.jsonl line %d" % i
        if set(p) != {"seq", "checkpoint_seq", "leaf_index", "tree_size", "leaf_hash", "audit_path"}:
            raise Defect("%s: unexpected fields" % where)
        b = by_seq.get(p["checkpoint_seq"])
        if b is None or p["seq"] != r["seq"] or not b["batch_start_seq"] <= p["seq"] <= b["batch_end_seq"]:
            raise Defect("%s: proof of seq %s in checkpoint %s does not fit" % (where, p["seq"], p["checkpoint_seq"]))
        if p["leaf_index"] != p["seq"] - b["batch_start_seq"] or p["tree_size"] != b["tree_size"]:
            raise Defect("%s: leaf %s of %s does not fit checkpoint %s" % (where, p["leaf_index"], p["tree_size"], p["checkpoint_seq"]))
        lf = leaf(cbytes(r["receipt"]))
        if check_root(p["leaf_hash"], "leaf_hash") != lf:
            raise Defect("%s: leaf_hash does not match receipt seq %d" % (where, r["seq"]))
        if root_from_path(lf, p["leaf_index"], p["tree_size"], p["audit_path"]) != check_root(b["merkle_root"], "merkle_root"):
            raise Defect("%s: audit path does not yield checkpoint %s's merkle_root" % (where, p["checkpoint_seq"]))
    return n, ncp, len(proofs), m["log_id"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--key", help="trusted kernel public key (hex); default: the first receipt's key")
    ap.add_argument("export", help="JSON Lines export ('-' for standard input), or an evidence package directory")
    a = ap.parse_args()
    if a.export != "-" and os.path.isdir(a.export):
        try:
            receipts, checkpoints, proofs, log_id = verify_package(a.export, a.key)
        except (Defect, KeyError, TypeError, OSError) as e:
            print("verify_export: FAIL: %s" % e, file=sys.stderr)
            return 1
        print("ok: package of %s: %d receipts, %d checkpoints, %d proofs" % (log_id, receipts, checkpoints, proofs))
        return 0
    f = sys.stdin if a.export == "-" else open(a.export, encoding="utf-8")
    try:
        receipts, checkpoints, unsealed = verify(f, a.key)
    except Defect as e:
        print("verify_export: FAIL: %s" % e, file=sys.stderr)
        return 1
    print("ok: %d receipts, %d checkpoints, %d unsealed" % (receipts, checkpoints, unsealed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
