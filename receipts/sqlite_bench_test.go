package receipts

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

// BenchmarkSQLiteBaseline is the same-run baseline for BenchmarkAppend: the
// same signed receipts, from the same number of writers, into SQLite on the
// same disk as the Chio guide configures it (WAL, synchronous=FULL, one
// insert per transaction), with the same indexes as the bbolt log.
func BenchmarkSQLiteBaseline(b *testing.B) {
	for _, writers := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "bench.sqlite")
			db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)")
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			// SQLite has one writer at a time; a single connection queues
			// writers in Go instead of spinning on SQLITE_BUSY.
			db.SetMaxOpenConns(1)
			for _, q := range []string{
				`CREATE TABLE receipts (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, timestamp INTEGER NOT NULL,
					decision TEXT NOT NULL, workload TEXT NOT NULL, host TEXT NOT NULL, receipt BLOB NOT NULL)`,
				`CREATE INDEX receipts_time ON receipts(timestamp)`,
				`CREATE INDEX receipts_decision ON receipts(decision)`,
				`CREATE INDEX receipts_workload ON receipts(workload)`,
				`CREATE INDEX receipts_host ON receipts(host)`,
			} {
				if _, err := db.Exec(q); err != nil {
					b.Fatal(err)
				}
			}
			var mode string
			if err := db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
				b.Fatalf("journal_mode %q: %v", mode, err)
			}
			key := testKey("bench")
			count := max(b.N, writers)
			var next atomic.Int64
			var wg sync.WaitGroup
			var failed atomic.Pointer[error]
			b.ResetTimer()
			start := time.Now()
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := int(next.Add(1) - 1)
						if i >= count || failed.Load() != nil {
							return
						}
						rc, err := syntheticReceipt(key, i, time.Now())
						if err == nil {
							var canon []byte
							if canon, err = rc.CanonicalJSON(); err == nil {
								e, _, perr := parseEntry(canon)
								if err = perr; err == nil {
									err = sqliteInsert(db, &e)
								}
							}
						}
						if err != nil {
							failed.CompareAndSwap(nil, &err)
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if p := failed.Load(); p != nil {
				b.Fatal(*p)
			}
			b.ReportMetric(float64(count)/elapsed.Seconds(), "receipts/s")
		})
	}
}

func sqliteInsert(db *sql.DB, e *Entry) error {
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(`INSERT INTO receipts (id, timestamp, decision, workload, host, receipt) VALUES (?, ?, ?, ?, ?, ?)`,
		e.ID, e.Timestamp, e.Decision, e.Workload, e.Host, []byte(e.Receipt)); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}
