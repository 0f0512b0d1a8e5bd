package sink_test

import (
	"context"
	"hash/crc32"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/backbay-labs/chio-agent/internal/testutil/dynalite"
	"github.com/backbay-labs/chio-agent/receipts"
	"github.com/backbay-labs/chio-agent/receipts/receiptstest"
	"github.com/backbay-labs/chio-agent/receipts/sink"
	"github.com/backbay-labs/chio-agent/receipts/sink/sinktest"
)

// openTable opens dynamodb://TABLE on the shared dynalite, a table of t's
// own, created by the sink.
func openTable(t *testing.T) sink.Store {
	t.Helper()
	d := dynalite.Shared(t)
	dynalite.Env(t, d.Endpoint())
	st, err := sink.OpenWith(context.Background(), "dynamodb://"+dynalite.Table(t), sink.OpenOptions{CreateTable: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestDynamoContract(t *testing.T) { sinktest.Contract(t, openTable) }

// client is an SDK client of the test's own on endpoint, to look at or
// damage the table behind the sink's back.
func client(t *testing.T, endpoint string) *dynamodb.Client {
	t.Helper()
	return dynamodb.New(dynamodb.Options{Region: "us-east-1", BaseEndpoint: aws.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider("chio-test", "chio-test-secret", "")})
}

// TestDynamoItems checks the table's shape as documented: one item per
// receipt with its indexed attributes and one per checkpoint, the indexes
// declared, and a receipt missing under a checkpoint read back as an error
// naming it, not as a shorter batch.
func TestDynamoItems(t *testing.T) {
	st := openTable(t)
	table := strings.TrimPrefix(st.String(), "dynamodb://")
	l, key := sinktest.NewLog(t, 10)
	receiptstest.Append(t, l, key, 0, 20)
	receiptstest.Seal(t, l)
	bs := sinktest.Sealed(t, l)
	ctx := context.Background()
	sinktest.PutAll(t, ctx, st, bs)
	c := client(t, dynalite.Shared(t).Endpoint())
	desc, err := c.DescribeTable(ctx, &dynamodb.DescribeTableInput{TableName: aws.String(table)})
	if err != nil {
		t.Fatal(err)
	}
	var idx []string
	for _, g := range desc.Table.GlobalSecondaryIndexes {
		idx = append(idx, aws.ToString(g.IndexName))
	}
	slices.Sort(idx)
	if strings.Join(idx, ",") != "host-time,verdict-time,workload-time" {
		t.Fatalf("indexes %v", idx)
	}
	logID, _ := l.LogID()
	// Receipt 5 (SyntheticReceipt 4): workload agent-4, host evil.example, denied.
	it, err := c.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(table), Key: map[string]types.AttributeValue{
		"log_id": &types.AttributeValueMemberS{Value: logID}, "sk": &types.AttributeValueMemberS{Value: "r#00000000000000000005"}}})
	if err != nil || it.Item == nil {
		t.Fatalf("receipt item 5: %v", err)
	}
	for k, want := range map[string]string{"workload": "agent-4", "host": "evil.example", "verdict": "deny"} {
		if v, ok := it.Item[k].(*types.AttributeValueMemberS); !ok || v.Value != want {
			t.Fatalf("receipt item 5: %s = %v, want %q", k, it.Item[k], want)
		}
	}
	if _, ok := it.Item["time"].(*types.AttributeValueMemberN); !ok {
		t.Fatalf("receipt item 5 has no numeric time: %v", it.Item["time"])
	}
	// The host index finds the denied receipts.
	q, err := c.Query(ctx, &dynamodb.QueryInput{TableName: aws.String(table), IndexName: aws.String("host-time"),
		KeyConditionExpression:    aws.String("host = :h"),
		ExpressionAttributeValues: map[string]types.AttributeValue{":h": &types.AttributeValueMemberS{Value: "evil.example"}}})
	if err != nil || q.Count != 4 { // receipts 4, 9, 14, 19 of 0..19
		t.Fatalf("host-time index: %d items, %v; want 4", q.Count, err)
	}
	// A receipt deleted behind the sink: its batch reads back as an error.
	if _, err := c.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(table), Key: map[string]types.AttributeValue{
		"log_id": &types.AttributeValueMemberS{Value: logID}, "sk": &types.AttributeValueMemberS{Value: "r#00000000000000000013"}}}); err != nil {
		t.Fatal(err)
	}
	err = st.Batches(ctx, logID, 0, func(b receipts.SealedBatch) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "checkpoint 2") {
		t.Fatalf("a batch with a receipt missing read back with %v, want an error naming checkpoint 2", err)
	}
}

// TestDynamoNoTable: without create_table a missing table is an error
// naming it and the option; nothing is created.
func TestDynamoNoTable(t *testing.T) {
	d := dynalite.Shared(t)
	dynalite.Env(t, d.Endpoint())
	table := dynalite.Table(t)
	st, err := sink.Open(context.Background(), "dynamodb://"+table)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, err = st.Stored(context.Background(), "local-log-x", 0)
	if err == nil || !strings.Contains(err.Error(), table) || !strings.Contains(err.Error(), "create_table") {
		t.Fatalf("missing table: %v", err)
	}
	if _, err := client(t, d.Endpoint()).DescribeTable(context.Background(), &dynamodb.DescribeTableInput{TableName: aws.String(table)}); err == nil {
		t.Fatal("the table was created without create_table")
	}
}

// TestDynamoThrottled puts through a proxy in front of dynalite that
// answers the first writes with DynamoDB's throttling errors: the SDK backs
// off and retries them, and the batch lands whole, once.
func TestDynamoThrottled(t *testing.T) {
	d := dynalite.Shared(t)
	target, _ := url.Parse(d.Endpoint())
	proxy := httputil.NewSingleHostReverseProxy(target)
	var throttled, writes atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op := r.Header.Get("X-Amz-Target")
		if strings.HasSuffix(op, ".BatchWriteItem") || strings.HasSuffix(op, ".PutItem") {
			if n := writes.Add(1); n <= 2 {
				throttled.Add(1)
				io.Copy(io.Discard, r.Body)
				kind := "ProvisionedThroughputExceededException"
				if n%2 == 0 {
					kind = "ThrottlingException"
				}
				body := `{"__type":"com.amazonaws.dynamodb.v20120810#` + kind + `","message":"slow down"}`
				w.Header().Set("Content-Type", "application/x-amz-json-1.0")
				w.Header().Set("X-Amz-Crc32", strconv.FormatUint(uint64(crc32.ChecksumIEEE([]byte(body))), 10))
				w.WriteHeader(http.StatusBadRequest)
				io.WriteString(w, body)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	dynalite.Env(t, srv.URL)
	st, err := sink.OpenWith(context.Background(), "dynamodb://"+dynalite.Table(t), sink.OpenOptions{CreateTable: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l, key := sinktest.NewLog(t, 30)
	receiptstest.Append(t, l, key, 0, 60)
	receiptstest.Seal(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sinktest.PutAll(t, ctx, st, sinktest.Sealed(t, l))
	if throttled.Load() != 2 || writes.Load() <= 2 {
		t.Fatalf("%d writes throttled of %d: the proxy did not throttle as meant", throttled.Load(), writes.Load())
	}
	sinktest.CheckHolds(t, st, l)
}
