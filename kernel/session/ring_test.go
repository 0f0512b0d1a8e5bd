package session

import (
	"fmt"
	"testing"
)

// TestRingMovesAboutOneNth: the owner does not depend on the peer list's
// order; adding a fourth replica moves about a quarter of the sessions, all
// to it; removing one moves only its own; the load is even.
func TestRingMovesAboutOneNth(t *testing.T) {
	const n = 40000
	three, _ := NewRing([]string{"replica-a:9090", "replica-b:9090", "replica-c:9090"})
	shuffled, _ := NewRing([]string{"replica-c:9090", "replica-a:9090", "replica-b:9090"})
	four, _ := NewRing([]string{"replica-a:9090", "replica-b:9090", "replica-c:9090", "replica-d:9090"})
	two, _ := NewRing([]string{"replica-a:9090", "replica-c:9090"})
	load := map[string]int{}
	moved, removed := 0, 0
	for i := range n {
		id := fmt.Sprintf("session-%d", i)
		o := three.Owner(id)
		load[o]++
		if shuffled.Owner(id) != o {
			t.Fatalf("%s: owner depends on the peer order", id)
		}
		if o4 := four.Owner(id); o4 != o {
			moved++
			if o4 != "replica-d:9090" {
				t.Fatalf("%s moved from %s to %s, not to the new replica", id, o, o4)
			}
		}
		if o2 := two.Owner(id); o2 != o {
			removed++
			if o != "replica-b:9090" {
				t.Fatalf("%s moved from %s, which stayed", id, o)
			}
		}
	}
	if moved < n/4-n/40 || moved > n/4+n/40 {
		t.Errorf("adding a fourth replica moved %d of %d sessions; want about a quarter", moved, n)
	}
	if removed != load["replica-b:9090"] {
		t.Errorf("removing a replica moved %d sessions; it owned %d", removed, load["replica-b:9090"])
	}
	for p, c := range load {
		if c < n/3-n/30 || c > n/3+n/30 {
			t.Errorf("%s owns %d of %d sessions; want about a third", p, c, n)
		}
	}
}

func TestRingRefuses(t *testing.T) {
	for _, peers := range [][]string{nil, {""}, {"a", "b", "a"}} {
		if _, err := NewRing(peers); err == nil {
			t.Errorf("NewRing(%q) accepted", peers)
		}
	}
	one, _ := NewRing([]string{"solo"})
	if one.Owner("x") != "solo" {
		t.Fatal("a ring of one does not own everything")
	}
	// Length-prefixed: a peer name cannot run into the session id.
	if score("ab", "c") == score("a", "bc") {
		t.Fatal("score(ab, c) == score(a, bc)")
	}
}
