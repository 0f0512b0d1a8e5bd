package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backbay-labs/chio-agent/receipts"
)

type showOptions struct {
	db dbOptions
}

func (o *showOptions) AddFlags(fs *pflag.FlagSet) { o.db.AddFlags(fs) }

func newReceiptsShowCommand() *cobra.Command {
	o := &showOptions{}
	cmd := &cobra.Command{
		Use:   "show SEQ|ID [flags]",
		Short: "Print one receipt by sequence number, id or id prefix",
		Long: `show prints one receipt as JSON. It is named by its sequence number (fewer
than 12 digits), its id (64 hex digits), or the start of its id, such as the
12 characters exec prints: a prefix that several receipts share is refused,
naming them.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := o.db.open()
			if err != nil {
				return err
			}
			defer l.Close()
			e, err := findReceipt(cmd.Context(), l, args[0])
			if err != nil {
				return err
			}
			var pretty any
			if err := json.Unmarshal(e.Receipt, &pretty); err != nil {
				return fmt.Errorf("show receipt seq %d: %w", e.Seq, err)
			}
			return writeJSON(cmd.OutOrStdout(), map[string]any{"seq": e.Seq, "receipt": pretty})
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// maxCandidates bounds the receipts an ambiguous prefix error names.
const maxCandidates = 5

// errAmbiguous means an id prefix names more than one receipt.
var errAmbiguous = errors.New("ambiguous id prefix")

// findReceipt finds a receipt by sequence number, id or id prefix.
func findReceipt(ctx context.Context, l *receipts.Log, arg string) (receipts.Entry, error) {
	if seq, err := strconv.ParseUint(arg, 10, 64); err == nil && len(arg) < 12 {
		return l.Get(seq)
	}
	id := strings.ToLower(arg)
	if strings.Trim(id, "0123456789abcdef") != "" || len(id) > 64 {
		return receipts.Entry{}, usageErrorf("show receipt: %q is neither a sequence number nor an id (hex)", arg)
	}
	if len(id) == 64 {
		return l.Lookup(id)
	}
	// A prefix: every receipt's id is read (the index is keyed by the id's
	// bytes, but a prefix of odd length is no whole byte).
	var found []receipts.Entry
	n := 0
	err := l.Scan(ctx, receipts.Filter{}, func(e receipts.Entry) error {
		if strings.HasPrefix(e.ID, id) {
			n++
			if len(found) < maxCandidates {
				found = append(found, e)
			}
		}
		return nil
	})
	switch {
	case err != nil:
		return receipts.Entry{}, err
	case n == 0:
		return receipts.Entry{}, fmt.Errorf("show receipt: no receipt id starts with %s: %w", id, receipts.ErrNotFound)
	case n > 1:
		var names []string
		for _, e := range found {
			names = append(names, fmt.Sprintf("seq %d (%s)", e.Seq, e.ID))
		}
		more := ""
		if n > len(found) {
			more = fmt.Sprintf(" and %d more", n-len(found))
		}
		return receipts.Entry{}, fmt.Errorf("show receipt: %w %s matches %d receipts: %s%s; give more of the id",
			errAmbiguous, id, n, strings.Join(names, ", "), more)
	}
	return found[0], nil
}
