// Package nolog is the default of every package that takes a logger and
// logs nothing unless given one (kernel, receipts, the sidecar, the CRI
// watcher): a library is silent until its caller chooses where lines go.
package nolog

import (
	"io"

	"github.com/sirupsen/logrus"
)

// Or returns l, or, when l is nil, a logger that discards every line.
func Or(l logrus.FieldLogger) logrus.FieldLogger {
	if l != nil {
		return l
	}
	d := logrus.New()
	d.SetOutput(io.Discard)
	return d
}
