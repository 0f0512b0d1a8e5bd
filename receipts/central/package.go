package central

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/backbay-labs/chio-agent/kernel/jcs"
	"github.com/backbay-labs/chio-agent/receipts"
)

// A federated evidence package is a directory:
//
//	manifest.json      {"body": PackageManifest, "signature": hex Ed25519 by exporter_key}
//	receipts.jsonl     {"receipt":{...},"seq":N} per line, seq 1..last_seq
//	checkpoints.jsonl  one signed checkpoint per line, 1..checkpoints
//	proofs.jsonl       {"audit_path":[...],"checkpoint_seq":C,"leaf_hash":...,"leaf_index":I,"seq":N,"tree_size":T}
//	rotations.jsonl    one key rotation statement per line, oldest first; only when the log's key was rotated
//
// Every line is canonical JSON; receipts and checkpoints are the stored
// bytes. A package carries one log's chain from checkpoint 1 (only sealed
// receipts), so whoever holds it checks the whole chain from its start.

// PackageSchema names the manifest format.
const PackageSchema = "chio-agent.evidence_package.v1"

// Package file names.
const (
	ManifestFile    = "manifest.json"
	ReceiptsFile    = "receipts.jsonl"
	CheckpointsFile = "checkpoints.jsonl"
	ProofsFile      = "proofs.jsonl"
	// RotationsFile holds the key rotation statements (receipts.Rotation)
	// the log's batches carry; a package of a log never rotated has none,
	// and no such file, as before statements existed.
	RotationsFile = "rotations.jsonl"
)

// maxPackageFile bounds each file an import reads (1 GiB).
const maxPackageFile = 1 << 30

// PackageManifest is the signed part of manifest.json.
type PackageManifest struct {
	Schema string `json:"schema"`
	// LogID and KernelKey name the exported log (its first key).
	LogID     string `json:"log_id"`
	KernelKey string `json:"kernel_key"`
	// ExporterKey signed the manifest (hex): the log's own key when a node
	// exports, a witness's key when a central store does.
	ExporterKey string `json:"exporter_key"`
	CreatedAt   int64  `json:"created_at"`
	Counts      struct {
		Receipts    uint64 `json:"receipts"`
		Checkpoints uint64 `json:"checkpoints"`
		Proofs      uint64 `json:"proofs"`
		Rotations   uint64 `json:"rotations,omitempty"`
	} `json:"counts"`
	Files []PackageFile `json:"files"`
}

// PackageFile is one file of the package as the manifest lists it.
type PackageFile struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

type signedManifest struct {
	Body      PackageManifest `json:"body"`
	Signature string          `json:"signature"`
}

type packageReceipt struct {
	Seq     uint64          `json:"seq"`
	Receipt json.RawMessage `json:"receipt"`
}

type packageProof struct {
	Seq           uint64   `json:"seq"`
	CheckpointSeq uint64   `json:"checkpoint_seq"`
	LeafIndex     uint64   `json:"leaf_index"`
	TreeSize      uint64   `json:"tree_size"`
	LeafHash      string   `json:"leaf_hash"`
	AuditPath     []string `json:"audit_path"`
}

// BatchSource yields one log's sealed batches from checkpoint 1 in order
// (LocalBatches, Store.Batches).
type BatchSource func(ctx context.Context, fn func(receipts.SealedBatch) error) error

// WritePackage writes the package of log logID (first key kernelKey) to
// dir, which must not exist, signing the manifest with exporter.
func WritePackage(ctx context.Context, dir, logID, kernelKey string, src BatchSource, exporter ed25519.PrivateKey, now time.Time) (*PackageManifest, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("write package: %w", err)
	}
	m := &PackageManifest{Schema: PackageSchema, LogID: logID, KernelKey: kernelKey,
		ExporterKey: hex.EncodeToString(exporter.Public().(ed25519.PublicKey)), CreatedAt: now.Unix()}
	files := map[string]*packageWriter{}
	for _, n := range []string{ReceiptsFile, CheckpointsFile, ProofsFile} {
		w, err := newPackageWriter(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		defer w.f.Close()
		files[n] = w
	}
	var line []byte
	var rotations []json.RawMessage
	err := src(ctx, func(b receipts.SealedBatch) error {
		if b.LogID != logID {
			return fmt.Errorf("batch of log %s in the package of log %s", b.LogID, logID)
		}
		cp, err := receipts.ParseCheckpoint(b.Checkpoint)
		if err != nil {
			return err
		}
		if err := files[CheckpointsFile].line(b.Checkpoint); err != nil {
			return err
		}
		m.Counts.Checkpoints++
		rotations = append(rotations, b.Rotations...)
		raw := make([][]byte, len(b.Receipts))
		for i, r := range b.Receipts {
			raw[i] = r
		}
		for i, r := range b.Receipts {
			seq := cp.Body.BatchStartSeq + uint64(i)
			if line, err = jcs.AppendMarshal(line[:0], packageReceipt{Seq: seq, Receipt: r}); err != nil {
				return err
			}
			if err := files[ReceiptsFile].line(line); err != nil {
				return err
			}
			p, err := receipts.NewProof(seq, cp, raw)
			if err != nil {
				return err
			}
			pp := packageProof{Seq: seq, CheckpointSeq: cp.Body.CheckpointSeq, LeafIndex: p.LeafIndex, TreeSize: p.TreeSize,
				LeafHash: p.LeafHash, AuditPath: p.AuditPath}
			if line, err = jcs.AppendMarshal(line[:0], pp); err != nil {
				return err
			}
			if err := files[ProofsFile].line(line); err != nil {
				return err
			}
			m.Counts.Receipts++
			m.Counts.Proofs++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("write package %s: %w", dir, err)
	}
	for _, n := range []string{CheckpointsFile, ProofsFile, ReceiptsFile} {
		pf, err := files[n].finish()
		if err != nil {
			return nil, fmt.Errorf("write package %s: %w", dir, err)
		}
		m.Files = append(m.Files, pf)
	}
	if len(rotations) > 0 {
		w, err := newPackageWriter(filepath.Join(dir, RotationsFile))
		if err != nil {
			return nil, err
		}
		defer w.f.Close()
		for _, r := range rotations {
			c, err := jcs.Canonicalize(r)
			if err != nil {
				return nil, fmt.Errorf("write package %s: key rotation statement: %w", dir, err)
			}
			if err := w.line(c); err != nil {
				return nil, fmt.Errorf("write package %s: %w", dir, err)
			}
		}
		pf, err := w.finish()
		if err != nil {
			return nil, fmt.Errorf("write package %s: %w", dir, err)
		}
		m.Files = append(m.Files, pf)
		m.Counts.Rotations = uint64(len(rotations))
	}
	body, err := jcs.Marshal(m)
	if err != nil {
		return nil, err
	}
	out, err := jcs.Marshal(signedManifest{Body: *m, Signature: hex.EncodeToString(ed25519.Sign(exporter, body))})
	if err != nil {
		return nil, err
	}
	if err := writeSynced(filepath.Join(dir, ManifestFile), append(out, '\n')); err != nil {
		return nil, fmt.Errorf("write package %s: %w", dir, err)
	}
	return m, nil
}

type packageWriter struct {
	f    *os.File
	bw   *bufio.Writer
	sum  hash.Hash
	n    int64
	name string
}

func newPackageWriter(path string) (*packageWriter, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("write package: %w", err)
	}
	return &packageWriter{f: f, bw: bufio.NewWriterSize(f, 1<<16), sum: sha256.New(), name: filepath.Base(path)}, nil
}

func (w *packageWriter) line(b []byte) error {
	for _, p := range [][]byte{b, {'\n'}} {
		w.sum.Write(p)
		w.n += int64(len(p))
		if _, err := w.bw.Write(p); err != nil {
			return err
		}
	}
	return nil
}

func (w *packageWriter) finish() (PackageFile, error) {
	if err := w.bw.Flush(); err != nil {
		return PackageFile{}, err
	}
	if err := w.f.Sync(); err != nil {
		return PackageFile{}, err
	}
	return PackageFile{Name: w.name, SHA256: hex.EncodeToString(w.sum.Sum(nil)), Size: w.n}, nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadPackage reads and checks the package in dir: the manifest's form and
// signature, every listed file's size and SHA-256 (and no file missing or
// unlisted), the counts, every line canonical, the receipts in sequence
// and covered by the checkpoints, every inclusion proof against its
// checkpoint, the whole chain through receipts.VerifyBatch from
// checkpoint 1, and that one key signs it at a time: the manifest's
// kernel_key, then each key the statements in rotations.jsonl hand it to
// (receipts.FollowRotations). It returns the manifest and the batches, in order. Trust in
// the keys is the caller's question (Store.Import asks it).
func ReadPackage(dir string) (*PackageManifest, []receipts.SealedBatch, error) {
	m, data, err := readManifest(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("read package %s: %w", dir, err)
	}
	bs, err := packageBatches(m, data)
	if err != nil {
		return nil, nil, fmt.Errorf("read package %s: %w", dir, err)
	}
	return m, bs, nil
}

// ErrPackage: the package's manifest, files or proofs do not check.
var ErrPackage = errors.New("evidence package fails verification")

func badPackage(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ErrPackage)
}

func readManifest(dir string) (*PackageManifest, map[string][]byte, error) {
	raw, err := readLimited(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, nil, err
	}
	var sm signedManifest
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sm); err != nil {
		return nil, nil, badPackage("manifest: %v", err)
	}
	canon, err := jcs.Marshal(&sm)
	if err != nil || !bytes.Equal(append(canon, '\n'), raw) {
		return nil, nil, badPackage("manifest is not canonical JSON")
	}
	m := &sm.Body
	if m.Schema != PackageSchema {
		return nil, nil, badPackage("manifest schema %q, want %q", m.Schema, PackageSchema)
	}
	pub, err := hex.DecodeString(m.ExporterKey)
	if err != nil || len(pub) != ed25519.PublicKeySize || strings.ToLower(m.ExporterKey) != m.ExporterKey {
		return nil, nil, badPackage("manifest exporter_key %q is not 64 lowercase hex digits", m.ExporterKey)
	}
	sig, err := hex.DecodeString(sm.Signature)
	body, _ := jcs.Marshal(m)
	if err != nil || !ed25519.Verify(ed25519.PublicKey(pub), body, sig) {
		return nil, nil, badPackage("manifest signature does not verify with exporter_key %s", m.ExporterKey)
	}
	if id, err := receipts.LogIDOf(m.KernelKey); err != nil || id != m.LogID {
		return nil, nil, badPackage("manifest log_id %s does not belong to kernel_key %s", m.LogID, m.KernelKey)
	}
	want := map[string]bool{ReceiptsFile: true, CheckpointsFile: true, ProofsFile: true}
	optional := map[string]bool{RotationsFile: true}
	data := map[string][]byte{}
	for _, f := range m.Files {
		if !want[f.Name] && !optional[f.Name] {
			return nil, nil, badPackage("manifest lists %q, not a package file (or twice)", f.Name)
		}
		delete(want, f.Name)
		delete(optional, f.Name)
		b, err := readLimited(filepath.Join(dir, f.Name))
		if err != nil {
			return nil, nil, err
		}
		sum := sha256.Sum256(b)
		if int64(len(b)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
			return nil, nil, badPackage("%s: %d bytes, sha256 %x; the manifest says %d bytes, sha256 %s", f.Name, len(b), sum, f.Size, f.SHA256)
		}
		data[f.Name] = b
	}
	for n := range want {
		return nil, nil, badPackage("manifest does not list %s", n)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		if _, ok := data[e.Name()]; !ok && e.Name() != ManifestFile {
			return nil, nil, badPackage("file %s is not in the manifest", e.Name())
		}
	}
	return m, data, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPackageFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxPackageFile {
		return nil, badPackage("%s is larger than %d bytes", filepath.Base(path), maxPackageFile)
	}
	return b, nil
}

// lines splits a package file into its lines, each canonical JSON.
func lines(name string, data []byte) ([][]byte, error) {
	if len(data) == 0 {
		return nil, nil
	}
	if data[len(data)-1] != '\n' {
		return nil, badPackage("%s does not end with a newline", name)
	}
	out := bytes.Split(data[:len(data)-1], []byte{'\n'})
	for i, l := range out {
		c, err := jcs.Canonicalize(l)
		if err != nil || !bytes.Equal(c, l) {
			return nil, badPackage("%s line %d is not canonical JSON", name, i+1)
		}
	}
	return out, nil
}

func strictDecode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

func packageBatches(m *PackageManifest, data map[string][]byte) ([]receipts.SealedBatch, error) {
	cpLines, err := lines(CheckpointsFile, data[CheckpointsFile])
	if err != nil {
		return nil, err
	}
	rLines, err := lines(ReceiptsFile, data[ReceiptsFile])
	if err != nil {
		return nil, err
	}
	pLines, err := lines(ProofsFile, data[ProofsFile])
	if err != nil {
		return nil, err
	}
	rotLines, err := lines(RotationsFile, data[RotationsFile])
	if err != nil {
		return nil, err
	}
	if uint64(len(rotLines)) != m.Counts.Rotations {
		return nil, badPackage("%s holds %d key rotation statements; the manifest counts %d", RotationsFile, len(rotLines), m.Counts.Rotations)
	}
	rotations := make([]json.RawMessage, len(rotLines))
	for i, l := range rotLines {
		rotations[i] = l
	}
	if uint64(len(cpLines)) != m.Counts.Checkpoints || uint64(len(rLines)) != m.Counts.Receipts || uint64(len(pLines)) != m.Counts.Proofs {
		return nil, badPackage("files hold %d checkpoints, %d receipts, %d proofs; the manifest counts %d, %d, %d",
			len(cpLines), len(rLines), len(pLines), m.Counts.Checkpoints, m.Counts.Receipts, m.Counts.Proofs)
	}
	if len(pLines) != len(rLines) {
		return nil, badPackage("%d proofs for %d receipts", len(pLines), len(rLines))
	}
	var out []receipts.SealedBatch
	var head receipts.ChainHead
	signer, attached := m.KernelKey, 0
	next := 0
	for i, cl := range cpLines {
		cp, err := receipts.ParseCheckpoint(cl)
		if err != nil {
			return nil, badPackage("%s line %d: %v", CheckpointsFile, i+1, err)
		}
		b := receipts.SealedBatch{LogID: m.LogID, KernelKey: cp.Body.KernelKey, Checkpoint: cl,
			Rotations: receipts.RotationsAt(rotations, cp.Body.BatchStartSeq)}
		attached += len(b.Rotations)
		var raw [][]byte
		for seq := cp.Body.BatchStartSeq; seq <= cp.Body.BatchEndSeq && seq != 0; seq++ {
			if next >= len(rLines) {
				return nil, badPackage("checkpoint %d covers seq %d-%d, the receipts end at seq %d", cp.Body.CheckpointSeq, cp.Body.BatchStartSeq, cp.Body.BatchEndSeq, next)
			}
			var pr packageReceipt
			if err := strictDecode(rLines[next], &pr); err != nil || pr.Seq != seq {
				return nil, badPackage("%s line %d: want receipt seq %d (%v)", ReceiptsFile, next+1, seq, err)
			}
			b.Receipts = append(b.Receipts, pr.Receipt)
			raw = append(raw, pr.Receipt)
			next++
		}
		_, nextHead, err := receipts.VerifyBatch(head, &b, nil)
		if err != nil {
			return nil, err
		}
		if i == 0 && cp.Body.KernelKey != m.KernelKey {
			return nil, badPackage("checkpoint 1 is signed by %s, the manifest names kernel_key %s", cp.Body.KernelKey, m.KernelKey)
		}
		// One key signs the log at a time; another only after the
		// statements that hand it over (trust in it is the importer's).
		if signer, _, err = receipts.FollowRotations(head, signer, &b, cp.Body.CheckpointSeq); err != nil {
			return nil, err
		}
		if signer != cp.Body.KernelKey {
			return nil, badPackage("checkpoint %d is signed by %s, but the log's key there is %s and no key rotation statement hands it over",
				cp.Body.CheckpointSeq, cp.Body.KernelKey, signer)
		}
		head = nextHead
		for j := range raw {
			pl := pLines[next-len(raw)+j]
			var pp packageProof
			if err := strictDecode(pl, &pp); err != nil {
				return nil, badPackage("%s line %d: %v", ProofsFile, next-len(raw)+j+1, err)
			}
			p := receipts.Proof{Schema: receipts.ProofSchema, Seq: pp.Seq, LeafIndex: pp.LeafIndex, TreeSize: pp.TreeSize,
				LeafHash: pp.LeafHash, AuditPath: pp.AuditPath, Receipt: raw[j], Checkpoint: cp}
			seq := cp.Body.BatchStartSeq + uint64(j)
			if pp.Seq != seq || pp.CheckpointSeq != cp.Body.CheckpointSeq {
				return nil, badPackage("%s line %d: proof of seq %d in checkpoint %d, want seq %d in checkpoint %d",
					ProofsFile, next-len(raw)+j+1, pp.Seq, pp.CheckpointSeq, seq, cp.Body.CheckpointSeq)
			}
			// The receipt's signature was checked by VerifyBatch.
			if err := p.Check(cp.Body.KernelKey, nil); err != nil {
				return nil, badPackage("%s line %d: %v", ProofsFile, next-len(raw)+j+1, err)
			}
		}
		out = append(out, b)
	}
	if next != len(rLines) {
		return nil, badPackage("%s holds %d receipts after the last checkpoint", ReceiptsFile, len(rLines)-next)
	}
	if attached != len(rotations) {
		return nil, badPackage("%s holds %d key rotation statements, %d of which start a batch", RotationsFile, len(rotations), attached)
	}
	return out, nil
}

// ImportResult says what Import did.
type ImportResult struct {
	Manifest *PackageManifest `json:"manifest"`
	// Stored counts the checkpoints the package added; Duplicate those
	// stored already.
	Stored    int `json:"stored"`
	Duplicate int `json:"duplicate"`
}

// Import checks the package in dir (ReadPackage) and that its exporter key
// is trusted, then ingests its batches in order: the checkpoints stored
// already are skipped, the ones past the stored head continue the chain. A
// checkpoint that differs from the stored one is a fork, refused naming
// both (and kept aside, as Ingest keeps any refused batch); the checkpoints
// before it stay stored. Importing the same package twice changes nothing.
func (s *Store) Import(ctx context.Context, dir string) (*ImportResult, error) {
	m, bs, err := ReadPackage(dir)
	if err != nil {
		return nil, fmt.Errorf("import package: %w", err)
	}
	if !s.trusted[m.ExporterKey] {
		return nil, fmt.Errorf("import package %s: exporter key %s is not trusted: %w", dir, m.ExporterKey, ErrPackage)
	}
	res := &ImportResult{Manifest: m}
	for _, b := range bs {
		r, err := s.Ingest(ctx, b)
		if err != nil {
			return res, fmt.Errorf("import package %s: %w", dir, err)
		}
		if r.Duplicate {
			res.Duplicate++
		} else {
			res.Stored++
		}
	}
	return res, nil
}
