package natscluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestClusterSurvivesOneServerAndRestarts checks the harness itself: a
// replicated stream keeps taking writes with one server killed, and a
// restarted server rejoins.
func TestClusterSurvivesOneServerAndRestarts(t *testing.T) {
	c := Start(t)
	nc, err := c.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: Size}); err != nil {
		t.Fatal(err)
	}
	c.Kill(0)
	for i := 0; i < 10; i++ {
		// An ack lost with the killed server (the stream's leader, or the
		// server the client was on) is waited for no longer than an
		// attempt: the message is sent again under its id, and the
		// stream's dedup keeps it once.
		for {
			actx, acancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := js.Publish(actx, "t.x", []byte("m"), jetstream.WithMsgID(fmt.Sprint(i)),
				jetstream.WithRetryAttempts(100), jetstream.WithRetryWait(100*time.Millisecond))
			acancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("publish with one server down: %v", err)
			}
		}
	}
	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReady(); err != nil {
		t.Fatal(err)
	}
	c.WaitStreamCurrent(t, "T")
	s, err := js.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 10 {
		t.Fatalf("stream holds %d messages, want 10", info.State.Msgs)
	}
}
