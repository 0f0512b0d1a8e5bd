package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/backbay-labs/chio-agent/receipts"
)

// The DynamoDB sink's table (docs/receipt-log.md, "Shipping to DynamoDB"):
// partition key log_id, sort key sk; a receipt is item
// (log_id, "r#" + its seq, 20 digits), a checkpoint item (log_id, "c#" +
// its checkpoint seq, 20 digits), so one Query by log id reads either kind
// in order.
const (
	attrLogID = "log_id"
	attrSK    = "sk"
	// Receipt items.
	attrSeq      = "seq"        // N: the receipt's seq in its log
	attrCpSeq    = "cp_seq"     // N: the checkpoint sealing it (on both kinds)
	attrReceipt  = "receipt"    // B: the signed receipt, the log's stored bytes
	attrID       = "receipt_id" // S
	attrWorkload = "workload"   // S, absent when the receipt names none
	attrHost     = "host"       // S, absent for non-egress receipts
	attrVerdict  = "verdict"    // S: allow, deny or none
	attrTime     = "time"       // N: the receipt's timestamp, unix seconds
	// Checkpoint items.
	attrCheckpoint = "checkpoint" // B: the signed checkpoint, as stored
	attrKernelKey  = "kernel_key" // S: hex public key of the batch
	attrRotations  = "rotations"  // L of B: key rotation statements, when any
	attrStartSeq   = "start_seq"  // N
	attrEndSeq     = "end_seq"    // N
	attrIssuedAt   = "issued_at"  // N: the checkpoint's issued_at

	receiptPrefix    = "r#"
	checkpointPrefix = "c#"
	// batchWriteMax is BatchWriteItem's limit of items per request.
	batchWriteMax = 25
)

// dynamoIndexes are the global secondary indexes a created table gets: each
// receipt by workload, host and verdict, in time order (keys only: the
// item is a GetItem away). Checkpoint items have none of these attributes
// and stay out of them.
var dynamoIndexes = []struct{ name, hash string }{
	{"workload-time", attrWorkload},
	{"host-time", attrHost},
	{"verdict-time", attrVerdict},
}

// tableName is DynamoDB's rule for table names.
var tableName = regexp.MustCompile(`^[A-Za-z0-9_.-]{3,255}$`)

// parseDynamo checks dynamodb://TABLE and returns the table.
func parseDynamo(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("receipt sink %q: %w", raw, err)
	}
	if u.User != nil {
		return "", fmt.Errorf("receipt sink dynamodb://%s: credentials in the URL are refused; the AWS SDK's default chain supplies them", u.Host)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return "", fmt.Errorf("receipt sink %q: want dynamodb://TABLE, nothing after the table name", raw)
	}
	if !tableName.MatchString(u.Host) {
		return "", fmt.Errorf("receipt sink %q: table name %q is not 3 to 255 letters, digits, '_', '-' or '.'", raw, u.Host)
	}
	return u.Host, nil
}

// dynamo is the dynamodb:// Store.
type dynamo struct {
	table  string
	create bool
	client *dynamodb.Client

	mu    sync.Mutex
	ready bool // the table is known to exist, ACTIVE, with our keys
}

func openDynamo(ctx context.Context, raw string, o OpenOptions) (Store, error) {
	table, err := parseDynamo(raw)
	if err != nil {
		return nil, err
	}
	// The SDK retries throttling (ProvisionedThroughputExceeded,
	// ThrottlingException, RequestLimitExceeded) and connection errors
	// itself, with jittered exponential backoff; more attempts than its
	// default, as a throttled table is a normal state, and no client-side
	// retry quota: the shipper bounds the puts in flight and backs off
	// itself, and a quota spent in an outage would fail puts at once
	// after it.
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRetryer(func() aws.Retryer {
		return retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = 8
			so.MaxBackoff = 5 * time.Second
			so.RateLimiter = ratelimit.None
		})
	}))
	if err != nil {
		return nil, fmt.Errorf("receipt sink dynamodb://%s: load AWS configuration: %w", table, err)
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("receipt sink dynamodb://%s: no AWS region: set AWS_REGION (ECS sets it) or region in the shared config", table)
	}
	return &dynamo{table: table, create: o.CreateTable, client: dynamodb.NewFromConfig(cfg)}, nil
}

func (d *dynamo) String() string { return "dynamodb://" + d.table }

func (d *dynamo) Close() error { return nil }

func sk(prefix string, seq uint64) string { return fmt.Sprintf("%s%020d", prefix, seq) }

func num(n uint64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatUint(n, 10)}
}

func str(s string) types.AttributeValue { return &types.AttributeValueMemberS{Value: s} }

// ensureTable checks, once, that the table exists with this sink's keys,
// creating it (with its indexes) when missing and allowed, and waits for it
// to be ACTIVE.
func (d *dynamo) ensureTable(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ready {
		return nil
	}
	out, err := d.client.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(d.table)})
	var missing *types.ResourceNotFoundException
	switch {
	case errors.As(err, &missing):
		if !d.create {
			return fmt.Errorf("%s: the table does not exist: create it (docs/receipt-log.md, \"Shipping to DynamoDB\") or allow receipts.store.create_table", d)
		}
		if err := d.createTable(ctx); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("%s: describe table: %w", d, err)
	default:
		if err := checkKeys(out.Table); err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
		if out.Table.TableStatus == types.TableStatusActive {
			d.ready = true
			return nil
		}
	}
	w := dynamodb.NewTableExistsWaiter(d.client, func(o *dynamodb.TableExistsWaiterOptions) {
		o.MinDelay, o.MaxDelay = 100*time.Millisecond, 2*time.Second
	})
	if err := w.Wait(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(d.table)}, 2*time.Minute); err != nil {
		return fmt.Errorf("%s: wait for the table to be active: %w", d, err)
	}
	d.ready = true
	return nil
}

// checkKeys refuses a table whose keys are not this sink's.
func checkKeys(t *types.TableDescription) error {
	want := map[string]types.KeyType{attrLogID: types.KeyTypeHash, attrSK: types.KeyTypeRange}
	ok := len(t.KeySchema) == 2
	for _, k := range t.KeySchema {
		ok = ok && want[aws.ToString(k.AttributeName)] == k.KeyType
	}
	if !ok {
		return fmt.Errorf("the table's keys are not log_id (partition) and sk (sort): not a receipt table")
	}
	return nil
}

func (d *dynamo) createTable(ctx context.Context) error {
	attrs := []types.AttributeDefinition{
		{AttributeName: aws.String(attrLogID), AttributeType: types.ScalarAttributeTypeS},
		{AttributeName: aws.String(attrSK), AttributeType: types.ScalarAttributeTypeS},
		{AttributeName: aws.String(attrTime), AttributeType: types.ScalarAttributeTypeN},
	}
	var gsis []types.GlobalSecondaryIndex
	for _, ix := range dynamoIndexes {
		attrs = append(attrs, types.AttributeDefinition{AttributeName: aws.String(ix.hash), AttributeType: types.ScalarAttributeTypeS})
		gsis = append(gsis, types.GlobalSecondaryIndex{
			IndexName: aws.String(ix.name),
			KeySchema: []types.KeySchemaElement{
				{AttributeName: aws.String(ix.hash), KeyType: types.KeyTypeHash},
				{AttributeName: aws.String(attrTime), KeyType: types.KeyTypeRange},
			},
			Projection: &types.Projection{ProjectionType: types.ProjectionTypeKeysOnly},
		})
	}
	_, err := d.client.CreateTable(ctx, &dynamodb.CreateTableInput{
		TableName:            aws.String(d.table),
		AttributeDefinitions: attrs,
		KeySchema: []types.KeySchemaElement{
			{AttributeName: aws.String(attrLogID), KeyType: types.KeyTypeHash},
			{AttributeName: aws.String(attrSK), KeyType: types.KeyTypeRange},
		},
		GlobalSecondaryIndexes: gsis,
		BillingMode:            types.BillingModePayPerRequest,
	})
	var inUse *types.ResourceInUseException
	if err != nil && !errors.As(err, &inUse) { // in use: another writer created it first
		return fmt.Errorf("%s: create table: %w", d, err)
	}
	return nil
}

// Put writes the batch's receipts, then its checkpoint: a checkpoint item
// present means every receipt it seals is in the table.
//
// Idempotence: a checkpoint already in the table is compared byte for byte
// and nothing is written (a different one is an error: a fork, or another
// log under the same id). Otherwise the receipts go in BatchWriteItem
// requests of 25, which take no conditions: a receipt written again
// overwrites itself with the same bytes (its key is its log and seq, its
// bytes signed), so a re-put after a crash or a lost response changes
// nothing; and no sealed receipt is ever overwritten, as a sealed batch
// (its checkpoint present) is never written again. The checkpoint item is
// a conditional put (attribute_not_exists): of two writers racing, one
// writes it and the other finds it held, identical.
func (d *dynamo) Put(ctx context.Context, b receipts.SealedBatch, cpSeq uint64) error {
	cp, err := receipts.ParseCheckpoint(b.Checkpoint)
	if err != nil {
		return fmt.Errorf("%s: put checkpoint %d: %w", d, cpSeq, err)
	}
	body := &cp.Body
	if body.CheckpointSeq != cpSeq || body.BatchEndSeq < body.BatchStartSeq ||
		uint64(len(b.Receipts)) != body.BatchEndSeq-body.BatchStartSeq+1 {
		return fmt.Errorf("%s: put checkpoint %d: the batch holds checkpoint %d and %d receipts for seqs %d..%d",
			d, cpSeq, body.CheckpointSeq, len(b.Receipts), body.BatchStartSeq, body.BatchEndSeq)
	}
	if err := d.ensureTable(ctx); err != nil {
		return err
	}
	cpItem := map[string]types.AttributeValue{
		attrLogID:      str(b.LogID),
		attrSK:         str(sk(checkpointPrefix, cpSeq)),
		attrCpSeq:      num(cpSeq),
		attrCheckpoint: &types.AttributeValueMemberB{Value: b.Checkpoint},
		attrKernelKey:  str(b.KernelKey),
		attrStartSeq:   num(body.BatchStartSeq),
		attrEndSeq:     num(body.BatchEndSeq),
		attrIssuedAt:   num(uint64(max(body.IssuedAt, 0))),
	}
	if len(b.Rotations) > 0 {
		l := make([]types.AttributeValue, len(b.Rotations))
		for i, r := range b.Rotations {
			l[i] = &types.AttributeValueMemberB{Value: r}
		}
		cpItem[attrRotations] = &types.AttributeValueMemberL{Value: l}
	}
	if held, err := d.checkHeld(ctx, b.LogID, cpSeq, cpItem); held || err != nil {
		return err
	}
	items := make([]map[string]types.AttributeValue, 0, len(b.Receipts))
	for i, r := range b.Receipts {
		seq := body.BatchStartSeq + uint64(i)
		e, err := receipts.EntryAt(seq, r)
		if err != nil {
			return fmt.Errorf("%s: put checkpoint %d: %w", d, cpSeq, err)
		}
		item := map[string]types.AttributeValue{
			attrLogID:   str(b.LogID),
			attrSK:      str(sk(receiptPrefix, seq)),
			attrSeq:     num(seq),
			attrCpSeq:   num(cpSeq),
			attrReceipt: &types.AttributeValueMemberB{Value: r},
			attrID:      str(e.ID),
			attrVerdict: str(e.Decision),
			attrTime:    num(uint64(max(e.Timestamp, 0))),
		}
		// An index key may not be empty: a receipt naming no workload
		// (host) stays out of that index.
		if e.Workload != "" {
			item[attrWorkload] = str(e.Workload)
		}
		if e.Host != "" {
			item[attrHost] = str(e.Host)
		}
		items = append(items, item)
	}
	for len(items) > 0 {
		n := min(len(items), batchWriteMax)
		if err := d.batchWrite(ctx, items[:n]); err != nil {
			return fmt.Errorf("%s: put receipts of checkpoint %d: %w", d, cpSeq, err)
		}
		items = items[n:]
	}
	_, err = d.client.PutItem(ctx, &dynamodb.PutItemInput{
		TableName:           aws.String(d.table),
		Item:                cpItem,
		ConditionExpression: aws.String("attribute_not_exists(" + attrSK + ")"),
	})
	var cond *types.ConditionalCheckFailedException
	if errors.As(err, &cond) {
		_, err = d.checkHeld(ctx, b.LogID, cpSeq, cpItem)
		return err
	}
	if err != nil {
		return fmt.Errorf("%s: put checkpoint %d: %w", d, cpSeq, err)
	}
	return nil
}

// checkHeld says whether the table holds checkpoint cpSeq of logID already:
// identical to want (success, nothing to write) or not (an error naming
// the difference).
func (d *dynamo) checkHeld(ctx context.Context, logID string, cpSeq uint64, want map[string]types.AttributeValue) (bool, error) {
	out, err := d.client.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:      aws.String(d.table),
		Key:            map[string]types.AttributeValue{attrLogID: str(logID), attrSK: str(sk(checkpointPrefix, cpSeq))},
		ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return false, fmt.Errorf("%s: read checkpoint %d: %w", d, cpSeq, err)
	}
	if out.Item == nil {
		return false, nil
	}
	got, err := checkpointBatch(logID, out.Item)
	if err != nil {
		return true, fmt.Errorf("%s: %w", d, err)
	}
	w, _ := checkpointBatch(logID, want)
	if !bytes.Equal(got.Checkpoint, w.Checkpoint) || got.KernelKey != w.KernelKey || !sameRaw(got.Rotations, w.Rotations) {
		return true, fmt.Errorf("%s: log %s checkpoint %d is held with other content than this log's: refusing to overwrite it (another log under the same id, or a fork)", d, logID, cpSeq)
	}
	return true, nil
}

// batchWrite puts items (at most 25) with BatchWriteItem, sending the
// unprocessed ones again (throttled partitions) with backoff until none
// remain or ctx ends.
func (d *dynamo) batchWrite(ctx context.Context, items []map[string]types.AttributeValue) error {
	reqs := make([]types.WriteRequest, len(items))
	for i, it := range items {
		reqs[i] = types.WriteRequest{PutRequest: &types.PutRequest{Item: it}}
	}
	wait := 50 * time.Millisecond
	for len(reqs) > 0 {
		out, err := d.client.BatchWriteItem(ctx, &dynamodb.BatchWriteItemInput{
			RequestItems: map[string][]types.WriteRequest{d.table: reqs},
		})
		if err != nil {
			return err
		}
		reqs = out.UnprocessedItems[d.table]
		if len(reqs) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d items left unprocessed (throttled): %w", len(reqs), ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
	return nil
}

// query runs a consistent Query of logID's items with sort keys from..to
// (inclusive), page by page, calling fn with each item in sort key order.
func (d *dynamo) query(ctx context.Context, logID, from, to string, projection string, fn func(map[string]types.AttributeValue) error) error {
	in := &dynamodb.QueryInput{
		TableName:              aws.String(d.table),
		KeyConditionExpression: aws.String("#l = :l AND #s BETWEEN :a AND :b"),
		ExpressionAttributeNames: map[string]string{
			"#l": attrLogID, "#s": attrSK,
		},
		ExpressionAttributeValues: map[string]types.AttributeValue{":l": str(logID), ":a": str(from), ":b": str(to)},
		ConsistentRead:            aws.Bool(true),
	}
	if projection != "" {
		in.ProjectionExpression = aws.String(projection)
	}
	p := dynamodb.NewQueryPaginator(d.client, in)
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return err
		}
		for _, it := range out.Items {
			if err := fn(it); err != nil {
				return err
			}
		}
	}
	return nil
}

// Stored reads the checkpoint items of logID past after: a checkpoint item
// is written after every receipt it seals.
func (d *dynamo) Stored(ctx context.Context, logID string, after uint64) ([]uint64, error) {
	if err := d.ensureTable(ctx); err != nil {
		return nil, err
	}
	var out []uint64
	err := d.query(ctx, logID, sk(checkpointPrefix, after+1), sk(checkpointPrefix, 1<<64-1), "#s, "+attrCpSeq, func(it map[string]types.AttributeValue) error {
		n, err := numAttr(it, attrCpSeq)
		if err != nil {
			return err
		}
		out = append(out, n)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: read checkpoints of %s: %w", d, logID, err)
	}
	return out, nil
}

// Logs scans the table for its logs' ids (the whole table is read: for
// verify and import, not for the shipping path).
func (d *dynamo) Logs(ctx context.Context) ([]string, error) {
	if err := d.ensureTable(ctx); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	p := dynamodb.NewScanPaginator(d.client, &dynamodb.ScanInput{
		TableName:                 aws.String(d.table),
		ProjectionExpression:      aws.String("#l"),
		FilterExpression:          aws.String("begins_with(#s, :c)"),
		ExpressionAttributeNames:  map[string]string{"#l": attrLogID, "#s": attrSK},
		ExpressionAttributeValues: map[string]types.AttributeValue{":c": str(checkpointPrefix)},
		ConsistentRead:            aws.Bool(true),
	})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s: list logs: %w", d, err)
		}
		for _, it := range out.Items {
			if v, ok := it[attrLogID].(*types.AttributeValueMemberS); ok {
				seen[v.Value] = true
			}
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids, nil
}

// Batches rebuilds each sealed batch of logID past after from its
// checkpoint item and its receipts' items, byte for byte as shipped.
func (d *dynamo) Batches(ctx context.Context, logID string, after uint64, fn func(receipts.SealedBatch) error) error {
	if err := d.ensureTable(ctx); err != nil {
		return err
	}
	var fnErr error
	err := d.query(ctx, logID, sk(checkpointPrefix, after+1), sk(checkpointPrefix, 1<<64-1), "", func(it map[string]types.AttributeValue) error {
		b, err := checkpointBatch(logID, it)
		if err != nil {
			return err
		}
		start, err1 := numAttr(it, attrStartSeq)
		end, err2 := numAttr(it, attrEndSeq)
		cpSeq, err3 := numAttr(it, attrCpSeq)
		if err := errors.Join(err1, err2, err3); err != nil {
			return err
		}
		next := start
		err = d.query(ctx, logID, sk(receiptPrefix, start), sk(receiptPrefix, end), "#s, "+attrSeq+", "+attrReceipt, func(r map[string]types.AttributeValue) error {
			seq, err := numAttr(r, attrSeq)
			if err != nil {
				return err
			}
			v, ok := r[attrReceipt].(*types.AttributeValueMemberB)
			if !ok || seq != next {
				return fmt.Errorf("receipt item %d of checkpoint %d: malformed or out of order", seq, cpSeq)
			}
			b.Receipts = append(b.Receipts, v.Value)
			next++
			return nil
		})
		if err != nil {
			return err
		}
		if next != end+1 {
			return fmt.Errorf("checkpoint %d seals receipts %d..%d, but the table holds %d of them", cpSeq, start, end, next-start)
		}
		if fnErr = fn(b); fnErr != nil {
			return fnErr
		}
		return nil
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return fmt.Errorf("%s: read batches of %s: %w", d, logID, err)
	}
	return nil
}

// checkpointBatch reads a checkpoint item into a batch without receipts.
func checkpointBatch(logID string, it map[string]types.AttributeValue) (receipts.SealedBatch, error) {
	b := receipts.SealedBatch{LogID: logID}
	cp, ok1 := it[attrCheckpoint].(*types.AttributeValueMemberB)
	key, ok2 := it[attrKernelKey].(*types.AttributeValueMemberS)
	if !ok1 || !ok2 {
		return b, fmt.Errorf("checkpoint item %v of %s lacks its checkpoint or kernel_key", it[attrSK], logID)
	}
	b.Checkpoint, b.KernelKey = cp.Value, key.Value
	if rs, ok := it[attrRotations].(*types.AttributeValueMemberL); ok {
		for _, r := range rs.Value {
			v, ok := r.(*types.AttributeValueMemberB)
			if !ok {
				return b, fmt.Errorf("checkpoint item %v of %s: a rotation statement is not binary", it[attrSK], logID)
			}
			b.Rotations = append(b.Rotations, v.Value)
		}
	}
	return b, nil
}

func numAttr(it map[string]types.AttributeValue, name string) (uint64, error) {
	v, ok := it[name].(*types.AttributeValueMemberN)
	if !ok {
		return 0, fmt.Errorf("item lacks number attribute %s", name)
	}
	n, err := strconv.ParseUint(v.Value, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("item attribute %s: %w", name, err)
	}
	return n, nil
}

func sameRaw[T ~[]byte](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
