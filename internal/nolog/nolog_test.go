package nolog

import (
	"bytes"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestOr(t *testing.T) {
	var b bytes.Buffer
	l := logrus.New()
	l.SetOutput(&b)
	if Or(l) != logrus.FieldLogger(l) {
		t.Fatal("Or replaced a given logger")
	}
	d, ok := Or(nil).(*logrus.Logger)
	if !ok || d == nil {
		t.Fatalf("Or(nil) = %T, want a *logrus.Logger", Or(nil))
	}
	d.Error("dropped")
	if b.Len() != 0 {
		t.Fatalf("the default logger wrote to another logger's output: %q", b.String())
	}
}
