package config

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/backbay-labs/chio-agent/internal/policysource"
	"github.com/backbay-labs/chio-agent/kernel/hushspec"
)

// MaxPolicyBytes bounds a policy fetched over HTTP, as hushspec bounds files.
const MaxPolicyBytes = 1 << 20

// ErrUnsupportedScheme means a source names a scheme this build cannot read.
var ErrUnsupportedScheme = fmt.Errorf("unsupported scheme")

// readsPolicies names the policy sources this build reads, for errors.
const readsPolicies = "this build reads a path, file://, http(s)://, s3://, gs:// and azblob://"

// LoadPolicy loads the HushSpec policy a source names: a path, file://PATH,
// http(s)://URL (fetched with a timeout and a size bound, an optional
// #sha256: pin; such a policy cannot use `extends`, which names files), or an object in a store,
// s3://, gs:// or azblob:// (internal/policysource: the cloud's SDK and
// default credentials, `extends` within the store, an optional #sha256:
// pin). panicFile, when set, is the panic sentinel.
func LoadPolicy(ctx context.Context, source, panicFile string) (*hushspec.Policy, error) {
	opts := []hushspec.Option{hushspec.WithContext(ctx)}
	if panicFile != "" {
		opts = append(opts, hushspec.WithPanicSentinel(panicFile))
	}
	if source == "" {
		return nil, fmt.Errorf("load policy: no policy source given")
	}
	scheme, rest, hasScheme := strings.Cut(source, "://")
	if !hasScheme {
		return hushspec.LoadFile(source, opts...)
	}
	switch scheme {
	case "file":
		u, err := url.Parse(source)
		if err != nil || u.Path == "" || (u.Host != "" && u.Host != "localhost") {
			return nil, fmt.Errorf("load policy: %q is not a file:// URL of a local path", source)
		}
		return hushspec.LoadFile(u.Path, opts...)
	case "http", "https":
		u, err := url.Parse(source)
		if err != nil {
			return nil, fmt.Errorf("load policy: %q is not a URL: %w", source, err)
		}
		pin, err := policysource.ParsePin(u.Fragment)
		if err != nil {
			return nil, fmt.Errorf("load policy %s: %w", source, err)
		}
		data, err := fetch(ctx, source)
		if err != nil {
			return nil, err
		}
		if err := policysource.CheckPin(data, pin); err != nil {
			return nil, fmt.Errorf("load policy %s: %w", source, err)
		}
		return hushspec.Parse(data, append(opts, hushspec.WithFilename(source))...)
	case "s3", "gs", "azblob":
		return policysource.Load(ctx, source, opts...)
	default:
		_ = rest
		return nil, fmt.Errorf("load policy: %w %q in %q (%s)", ErrUnsupportedScheme, scheme, source, readsPolicies)
	}
}

func fetch(ctx context.Context, u string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch policy %s: %w", u, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch policy %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch policy %s: %s", u, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch policy %s: %w", u, err)
	}
	if len(data) > MaxPolicyBytes {
		return nil, fmt.Errorf("fetch policy %s: larger than %d bytes", u, MaxPolicyBytes)
	}
	return data, nil
}

// ReceiptPath turns a receipt sink into a bbolt file path: a path or
// file://PATH. Other schemes stop the start (NATS and store sinks ship
// beside a local log: ResolveSink).
func ReceiptPath(sink string) (string, error) {
	if sink == "" {
		return "", fmt.Errorf("receipt sink: none given")
	}
	scheme, _, hasScheme := strings.Cut(sink, "://")
	if !hasScheme {
		return sink, nil
	}
	if scheme == "file" {
		u, err := url.Parse(sink)
		if err != nil || u.Path == "" || (u.Host != "" && u.Host != "localhost") {
			return "", fmt.Errorf("receipt sink: %q is not a file:// URL of a local path", sink)
		}
		return u.Path, nil
	}
	return "", fmt.Errorf("receipt sink: %w %q in %q (this build writes a bbolt file: a path or file://)", ErrUnsupportedScheme, scheme, sink)
}
