package sidecar

import (
	"errors"
	"strings"
	"testing"
)

func mustSpec(t *testing.T, text string) *Spec {
	t.Helper()
	s, err := ParseSpec([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSpecMatch(t *testing.T) {
	s := mustSpec(t, testSpec)
	for _, tc := range []struct {
		method, path, op string
		params           map[string]string
	}{
		{"GET", "/pets", "listPets", nil},
		{"POST", "/pets", "createPet", nil},
		{"GET", "/pets/mine", "listMyPets", nil},
		{"DELETE", "/pets/mine", "deletePet", map[string]string{"petId": "mine"}}, // backtracks to the template
		{"GET", "/pets/a%20b", "getPet", map[string]string{"petId": "a b"}},
		{"GET", "/files/report.json", "getFileJSON", map[string]string{"name": "report"}},
		{"GET", "/pets/", "", nil},
		{"GET", "/files/.json", "", nil}, // an empty parameter matches nothing
		{"PATCH", "/pets", "", nil},
		{"GET", "/", "", nil},
		{"GET", "/pets/1/2", "", nil},
	} {
		m, ok, err := s.Match(tc.method, tc.path)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		if tc.op == "" {
			if ok {
				t.Errorf("%s %s matched %s; want no match", tc.method, tc.path, m.Op.ID)
			}
			continue
		}
		if !ok || m.Op.ID != tc.op {
			t.Errorf("%s %s: ok=%v op=%v; want %s", tc.method, tc.path, ok, m.Op, tc.op)
			continue
		}
		for k, v := range tc.params {
			if m.Params[k] != v {
				t.Errorf("%s %s: param %s = %q; want %q", tc.method, tc.path, k, m.Params[k], v)
			}
		}
	}
}

func TestSpecBasePathAndJSON(t *testing.T) {
	s := mustSpec(t, `{"openapi":"3.1.0","servers":[{"url":"https://{host}/api/{ver}/","variables":{"host":{"default":"x"},"ver":{"default":"v2"}}}],
		"paths":{"/items/{id}":{"get":{"operationId":"getItem"}},"x-internal":{}}}`)
	if s.BasePath != "/api/v2" {
		t.Fatalf("base path %q", s.BasePath)
	}
	if m, ok, _ := s.Match("GET", "/api/v2/items/3"); !ok || m.Op.Route != "/api/v2/items/{id}" || m.Params["id"] != "3" {
		t.Fatalf("match %+v %v", m, ok)
	}
	if _, ok, _ := s.Match("GET", "/items/3"); ok {
		t.Fatal("matched without the base path")
	}
}

func TestSpecMalformedPaths(t *testing.T) {
	s := mustSpec(t, testSpec)
	for _, p := range []string{"pets", "/pets//x", "/pets/..", "/pets/%2e", "/pets/a%2Fb", "/pets/a\\b", "/pets/%zz", "/pets/%ff", "/pets/%0a", "/" + strings.Repeat("a/", maxSegments+1)} {
		if _, _, err := s.Match("GET", p); !errors.Is(err, ErrMalformedPath) {
			t.Errorf("%q: err = %v; want ErrMalformedPath", p, err)
		}
	}
}

func TestParseSpecRejects(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"swagger 2", "swagger: '2.0'\npaths: {}\n", "OpenAPI 2"},
		{"no version", "paths: {/x: {get: {operationId: a}}}\n", "not 3.x"},
		{"no paths", "openapi: 3.0.0\n", "no paths"},
		{"no operations", "openapi: 3.0.0\npaths: {/x: {summary: s}}\n", "no operations"},
		{"missing operationId", "openapi: 3.0.0\npaths:\n  /x:\n    get: {}\n", "line 4: paths./x.get: operationId is required"},
		{"duplicate operationId", "openapi: 3.0.0\npaths:\n  /x: {get: {operationId: a}}\n  /y: {get: {operationId: a}}\n", "already used by GET /x"},
		{"reserved operationId", "openapi: 3.0.0\npaths: {/x: {get: {operationId: " + UnmatchedToolName + "}}}\n", "reserved"},
		{"same route twice", "openapi: 3.0.0\npaths:\n  /x/{a}: {get: {operationId: a}}\n  /x/{b}: {put: {operationId: b}}\n", "same requests as /x/{a}"},
		{"ref", "openapi: 3.0.0\npaths: {/x: {$ref: '#/c'}}\n", "not supported"},
		{"unknown field", "openapi: 3.0.0\npaths: {/x: {fetch: {operationId: a}}}\n", `unknown field "fetch"`},
		{"relative path", "openapi: 3.0.0\npaths: {x: {get: {operationId: a}}}\n", "must start with /"},
		{"two params in a segment", "openapi: 3.0.0\npaths: {'/x/{a}-{b}': {get: {operationId: a}}}\n", "more than one parameter"},
		{"unbalanced", "openapi: 3.0.0\npaths: {'/x/{a': {get: {operationId: a}}}\n", "unbalanced"},
		{"repeated param", "openapi: 3.0.0\npaths: {'/x/{a}/{a}': {get: {operationId: a}}}\n", "appears twice"},
		{"operation not a map", "openapi: 3.0.0\npaths: {/x: {get: [1]}}\n", "must be a mapping"},
		{"two documents", "openapi: 3.0.0\npaths: {/x: {get: {operationId: a}}}\n---\na: 1\n", "more than one"},
		{"server var without default", "openapi: 3.0.0\nservers: [{url: '/{v}'}]\npaths: {/x: {get: {operationId: a}}}\n", "no default"},
		{"not yaml", "openapi: [\n", "invalid openapi spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(tc.doc))
			if err == nil || !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v; want ErrInvalidSpec mentioning %q", err, tc.want)
			}
		})
	}
}

// FuzzSpec: parsing never panics, and a parsed spec matches every request
// path without panicking, each match naming one of its operations.
func FuzzSpec(f *testing.F) {
	f.Add([]byte(testSpec), "GET", "/pets/1")
	f.Add([]byte("openapi: 3.0.0\npaths: {/a/{b}.c: {get: {operationId: x}}}\n"), "GET", "/a/q.c")
	f.Add([]byte(`{"openapi":"3.1.0","paths":{"/":{"get":{"operationId":"root"}}}}`), "GET", "/")
	f.Fuzz(func(t *testing.T, doc []byte, method, path string) {
		s, err := ParseSpec(doc)
		if err != nil {
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("error %v does not wrap ErrInvalidSpec", err)
			}
			return
		}
		m, ok, err := s.Match(method, path)
		if err != nil && !errors.Is(err, ErrMalformedPath) {
			t.Fatalf("match error %v does not wrap ErrMalformedPath", err)
		}
		if ok && (m.Op == nil || m.Op.Method != method || len(m.Params) != len(m.Op.Params)) {
			t.Fatalf("inconsistent match %+v for %s %s", m, method, path)
		}
	})
}
