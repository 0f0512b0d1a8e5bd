package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/backbay-labs/chio-agent/kernel/session"
)

// A replica that stops (SIGTERM: a rolling update, a scale-down) hands
// the sessions it holds to their next owners before it exits (Drain), so
// that with takeover "refuse" none waits for it to come back:
//
//  1. it is leaving: its PathLive answers 503 with HeaderReplicaState
//     "leaving", it tells every peer so (PathPeerLeaving: they see it
//     down at once, and their probes keep seeing it down), it takes no
//     session, and it forwards every request of a session it does not
//     hold, or that another replica now owns, to that replica;
//  2. for each session it holds it asks the session's next owner among
//     the replicas up to take it (PathPeerTake): that replica takes it as
//     it takes any session (takeOnce), pulling the journal with
//     PathPeerHandover, so the move is the proven Seal and Continue and
//     the session has one holder throughout;
//  3. it retries what could not move (calls in flight, an owner busy)
//     until the drain timeout; what is left stays in its journal, held
//     here, and is logged and counted.

// Endpoints between replicas for a replica stopping (POST, peer token).
const (
	PathPeerTake    = "/chio/peer/take"
	PathPeerLeaving = "/chio/peer/leaving"
)

// HeaderReplicaState is set to "leaving" on a stopping replica's PathLive
// answer (503).
const HeaderReplicaState = "Chio-Replica-State"

const (
	replicaLeaving   = "leaving"
	codeReplicaLeave = "chio_replica_leaving"
	// headerDrainHop marks a request a leaving replica forwarded: the
	// replica receiving it never forwards it again (two hops at most: a
	// peer that did not know yet, then the leaving replica).
	headerDrainHop = "Chio-Drain-Hop"
	// drainWorkers bounds the sessions handed over at once.
	drainWorkers = 16
	// drainRetry is the pause between passes over the sessions left.
	drainRetry = 100 * time.Millisecond
	// leavingNotice bounds telling the peers this replica is leaving.
	leavingNotice = 2 * time.Second
)

type peerRequest struct {
	Session string `json:"session,omitempty"`
	Replica string `json:"replica,omitempty"`
}

// DrainResult is what a stopping replica did with its sessions.
type DrainResult struct {
	// HandedOver sessions are held by another replica now; Kept ones
	// stay held here (in this replica's journal) because no replica took
	// them before the drain ended.
	HandedOver int `json:"handed_over"`
	Kept       int `json:"kept"`
}

// drainState is a drain's progress, for the admin status.
type drainState struct {
	leaving    atomic.Bool
	handedOver atomic.Int64
	kept       atomic.Int64
}

// Drain makes this replica leave its peers and hand every session it
// holds to the session's next owner among the replicas up, until none is
// left or ctx ends. The replica keeps serving: requests of sessions it
// handed over are forwarded to their holder. It does nothing with one
// replica. A replica that has drained never takes a session again: stop
// it next (Close).
func (s *Server) Drain(ctx context.Context) DrainResult {
	rp := s.replicas
	if rp == nil {
		return DrainResult{}
	}
	s.drain.leaving.Store(true)
	s.log.Info("replica stopping: handing its sessions to the other replicas")
	rp.tellLeaving(ctx)
	var res DrainResult
	seen := map[string]bool{} // held here since the drain began
	for {
		held, err := s.heldSessions()
		if err != nil {
			s.log.WithError(err).Error("sessions held here not listed: they stay here")
			break
		}
		for _, id := range held {
			seen[id] = true
		}
		// Handed over: by this drain, or taken by the replica a request
		// of it was forwarded to.
		res.Kept, res.HandedOver = len(held), len(seen)-len(held)
		s.drain.kept.Store(int64(res.Kept))
		s.drain.handedOver.Store(int64(res.HandedOver))
		if len(held) == 0 || ctx.Err() != nil {
			break
		}
		if s.handOver(ctx, held) == 0 {
			break // no other replica up to take them
		}
		select {
		case <-ctx.Done():
		case <-time.After(drainRetry):
		}
	}
	log := s.log.WithField("handed_over", res.HandedOver).WithField("kept", res.Kept)
	if res.Kept > 0 {
		log.Warn("replica stopping: sessions not handed over stay in its journal, held here; their requests are refused elsewhere until it returns (takeover refuse)")
	} else {
		log.Info("replica stopping: every session handed over")
	}
	return res
}

// heldSessions lists the sessions this replica holds.
func (s *Server) heldSessions() ([]string, error) {
	heads, err := s.sessions.Heads()
	if err != nil {
		return nil, err
	}
	var held []string
	for _, h := range heads {
		hold, err := s.sessions.Holding(h.SessionID)
		if err != nil {
			return nil, err
		}
		if hold.Here {
			held = append(held, h.SessionID)
		}
	}
	return held, nil
}

// handOver asks each session's next owner to take it, drainWorkers at a
// time. It returns how many it found an owner for.
func (s *Server) handOver(ctx context.Context, ids []string) int {
	rp := s.replicas
	work := make(chan string)
	var mu sync.Mutex
	var wg sync.WaitGroup
	asked := 0
	for range min(drainWorkers, len(ids)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				owner := s.nextOwner(id)
				if owner == "" {
					continue // no other replica up: it stays here
				}
				mu.Lock()
				asked++
				mu.Unlock()
				if err := rp.askTake(ctx, owner, id); err != nil {
					s.log.WithError(err).WithField("session", id).WithField("to", owner).Debug("session not handed over yet")
				}
			}
		}()
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	return asked
}

// nextOwner is the owner of session id among the replicas up other than
// this one; "" when none is.
func (s *Server) nextOwner(id string) string {
	rp := s.replicas
	ring := rp.ring.Load()
	if ring == nil {
		return ""
	}
	return ring.OwnerAmong(id, func(p string) bool { return p != rp.self && rp.health.up(p) })
}

// routeLeaving routes a request on a leaving replica: a session it holds
// is decided here (as route does); any other session's request goes to
// its owner among the other replicas, marked so that it goes no further.
// It returns true when it answered the request.
func (s *Server) routeLeaving(w http.ResponseWriter, r *http.Request) bool {
	rp := s.replicas
	forwarded := len(r.Header.Values(HeaderForwardedBy)) > 0
	if forwarded && !rp.peerAuthorized(r) {
		return false // route refuses it
	}
	id := s.routingSession(r)
	if id == "" {
		return false
	}
	if h, err := s.sessions.Holding(id); err == nil && h.Here && forwarded {
		return false // decided here, where it is held
	}
	owner := s.nextOwner(id)
	switch {
	case owner == "":
		return false // no other replica up: decided here or refused (takeOnce)
	case forwarded && len(r.Header.Values(headerDrainHop)) > 0:
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: codeSessionMoving,
			Message: "session " + id + " is moving between replicas (two of them are stopping); retry"})
		return true
	}
	r.Header.Del(HeaderForwardedBy)
	r.Header.Del(HeaderPeerToken)
	r.Header.Set(headerDrainHop, rp.self)
	rp.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ownerKey{}, owner)))
	return true
}

// servePeerTake takes a session a stopping replica hands over.
func (s *Server) servePeerTake(w http.ResponseWriter, r *http.Request) {
	req, ok := s.peerRequest(w, r, PathPeerTake)
	if !ok {
		return
	}
	if !session.ValidID(req.Session) {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: PathPeerTake + " names a valid session"})
		return
	}
	if s.drain.leaving.Load() {
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: codeReplicaLeave, Message: "this replica is stopping and takes no session"})
		return
	}
	if err := s.takeOnce(r.Context(), req.Session); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: codeSessionMoving, Message: "session " + req.Session + " not taken: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"state": "taken"})
}

// servePeerLeaving records that a peer is stopping: it is down here (its
// sessions go to their next replica) until a probe finds it live again.
func (s *Server) servePeerLeaving(w http.ResponseWriter, r *http.Request) {
	req, ok := s.peerRequest(w, r, PathPeerLeaving)
	if !ok {
		return
	}
	if req.Replica == "" || req.Replica == s.replicas.self {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: PathPeerLeaving + " names another replica"})
		return
	}
	s.replicas.health.markLeaving(req.Replica)
	writeJSON(w, http.StatusOK, map[string]string{"state": "noted"})
}

// peerRequest checks a replicas' POST endpoint's caller and method and
// decodes its body; false when it answered.
func (s *Server) peerRequest(w http.ResponseWriter, r *http.Request, path string) (peerRequest, bool) {
	var req peerRequest
	if s.replicas == nil || !s.replicas.peerAuthorized(r) {
		writeJSON(w, http.StatusForbidden, errorBody{Error: codePeerUnauthorized, Message: path + " answers the replicas only, with their peer token"})
		return req, false
	}
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: codeBadRequest, Message: path + " takes POST"})
		return req, false
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, maxHandoverBody)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: path + ": " + err.Error()})
		return req, false
	}
	return req, true
}

// tellLeaving tells every peer of the ring this replica is leaving
// (bounded by leavingNotice; a peer that misses it finds out by probing).
func (rp *replicas) tellLeaving(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, leavingNotice)
	defer cancel()
	rp.eachPeer(func(p string) {
		rp.postPeer(ctx, p, PathPeerLeaving, peerRequest{Replica: rp.self})
	})
}

// askTake asks peer to take session id (it pulls it from here).
func (rp *replicas) askTake(ctx context.Context, peer, id string) error {
	ctx, cancel := context.WithTimeout(ctx, handoverTimeout)
	defer cancel()
	return rp.postPeer(ctx, peer, PathPeerTake, peerRequest{Session: id})
}

// postPeer POSTs body to peer's path with the peer token; an answer other
// than 200 is an error.
func (rp *replicas) postPeer(ctx context.Context, peer, path string, body peerRequest) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+peer+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set(HeaderPeerToken, rp.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := rp.client.Do(req)
	if err != nil {
		rp.health.markDown(peer, err)
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s%s answered %s: %s", peer, path, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// markLeaving takes peer down at once: it said it is stopping.
func (h *peerHealth) markLeaving(peer string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down == nil {
		h.down, h.failures = map[string]bool{}, map[string]int{}
	}
	if !h.down[peer] {
		h.down[peer] = true
		h.log.WithField("peer", peer).Info("session peer stopping: its sessions go to their next replica")
	}
}
