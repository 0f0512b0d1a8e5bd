package sidecar

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/backbay-labs/chio-agent/kernel/config"
	"github.com/backbay-labs/chio-agent/kernel/session"
)

// PathPeerHandover is the replicas' endpoint handing a session's journal
// to the replica taking it (POST, peer token required).
const PathPeerHandover = "/chio/peer/handover"

const (
	codeSessionMoving  = "chio_session_moving"
	codeHistoryUnknown = "chio_session_history_unknown"
	// handoverTimeout bounds one replica's asking its peers for a session.
	handoverTimeout = 10 * time.Second
	maxHandoverBody = 4 << 10
	// maxTransferBody bounds a handover answer (a session's journal).
	maxTransferBody = 64 << 20
)

// Answers of the handover endpoint.
const (
	handoverHeld  = "held"  // sealed here for the asker: the transfer follows
	handoverNone  = "none"  // not here; Hints: the replicas that asked before
	handoverMoved = "moved" // handed over earlier, to Holder
	handoverBusy  = "busy"  // calls in flight, or being taken: ask again
)

type handoverRequest struct {
	Session string `json:"session"`
	To      string `json:"to"`
}

type handoverAnswer struct {
	State string `json:"state"`
	// Holder: where a moved session went; Hints: the replicas that asked
	// for it before (any may hold it).
	Holder   string            `json:"holder,omitempty"`
	Hints    []string          `json:"hints,omitempty"`
	Transfer *session.Transfer `json:"transfer,omitempty"`
}

// sessionLocks serializes, per session, a replica taking a session and
// its answering a peer that asks for it.
type sessionLocks struct {
	mu    sync.Mutex
	locks map[string]*sessionLock
}

type sessionLock struct {
	mu   sync.Mutex
	refs int
}

// lock locks session id (wait: block; else fail when taken). It returns
// the unlock, or nil when the session is taken and wait is false.
func (l *sessionLocks) lock(id string, wait bool) func() {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = map[string]*sessionLock{}
	}
	sl := l.locks[id]
	if sl == nil {
		sl = &sessionLock{}
		l.locks[id] = sl
	}
	sl.refs++
	l.mu.Unlock()
	release := func() {
		l.mu.Lock()
		if sl.refs--; sl.refs == 0 {
			delete(l.locks, id)
		}
		l.mu.Unlock()
	}
	if wait {
		sl.mu.Lock()
	} else if !sl.mu.TryLock() {
		release()
		return nil
	}
	return func() {
		sl.mu.Unlock()
		release()
	}
}

// peerAuthorized checks a peer's token header (one value, the replicas'
// shared secret).
func (rp *replicas) peerAuthorized(r *http.Request) bool {
	tokens := r.Header.Values(HeaderPeerToken)
	got := sha256.Sum256([]byte(strings.Join(tokens, ",")))
	return len(tokens) == 1 && subtle.ConstantTimeCompare(got[:], rp.tokenHash[:]) == 1
}

// servePeerHandover answers a peer taking a session: this replica seals it
// for the peer when it holds it, else says where it went or who asked
// last, after recording durably that the peer asked (so that a replica
// later taking the session knows the peer may hold it).
func (s *Server) servePeerHandover(w http.ResponseWriter, r *http.Request) {
	rp := s.replicas
	if rp == nil || !rp.peerAuthorized(r) {
		writeJSON(w, http.StatusForbidden, errorBody{Error: codePeerUnauthorized, Message: PathPeerHandover + " answers the replicas only, with their peer token"})
		return
	}
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Error: codeBadRequest, Message: PathPeerHandover + " takes POST"})
		return
	}
	var req handoverRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxHandoverBody)).Decode(&req); err != nil || !session.ValidID(req.Session) {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: "a handover request names a valid session and the replica taking it"})
		return
	}
	// The asker may be in a ring newer than this one's (a replica just
	// added): any other replica with the peer token may ask.
	if _, _, err := net.SplitHostPort(req.To); err != nil || req.To == rp.self {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: codeBadRequest, Message: fmt.Sprintf("%q is not another replica's host:port", req.To)})
		return
	}
	unlock := rp.locks.lock(req.Session, false)
	if unlock == nil {
		writeJSON(w, http.StatusOK, handoverAnswer{State: handoverBusy})
		return
	}
	defer unlock()
	ans, err := s.answerHandover(r.Context(), req)
	if err != nil {
		s.log.WithError(err).WithField("session", req.Session).Error("session handover failed")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: codeSessionFailed, Message: err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, ans)
}

func (s *Server) answerHandover(ctx context.Context, req handoverRequest) (handoverAnswer, error) {
	h, err := s.sessions.Holding(req.Session)
	if err != nil {
		return handoverAnswer{}, err
	}
	if h.Here || (h.Head.Seq > 0 && h.Head.Holder == req.To) {
		// Held here, or sealed for the asker already (it lost the answer).
		t, err := s.sessions.Seal(ctx, req.Session, req.To)
		if errors.Is(err, session.ErrBusy) {
			return handoverAnswer{State: handoverBusy}, nil
		}
		if err != nil {
			return handoverAnswer{}, err
		}
		s.log.WithField("session", req.Session).WithField("to", req.To).Info("session handed over")
		return handoverAnswer{State: handoverHeld, Transfer: t}, nil
	}
	if err := s.sessions.AddHint(req.Session, req.To); err != nil {
		return handoverAnswer{}, err
	}
	if h.Head.Seq > 0 && h.Head.Holder != "" {
		return handoverAnswer{State: handoverMoved, Holder: h.Head.Holder, Hints: h.Hints}, nil
	}
	return handoverAnswer{State: handoverNone, Hints: h.Hints}, nil
}

// takeSession makes this replica the holder of session id before it
// decides a request of it: it asks every other replica of the ring for
// the session; a holder seals its journal and sends it (the session
// continues here linked to it). When none holds it and none that might
// (the last holder known, the replicas known to have asked for it) is
// unreachable, and more than half the ring answered, the session is new. Otherwise its history is unknown: it
// is refused (takeover "refuse"), or continued in an unlinked segment
// from the figures this journal holds ("unlinked"). It answers the
// request and returns true when it refused it.
func (s *Server) takeSession(w http.ResponseWriter, r *http.Request, id string) bool {
	var err error
	var he *historyError
	for attempt := range takeAttempts {
		if attempt > 0 {
			// Two replicas taking one session (their views differ for a
			// moment) each find the other busy: back off apart.
			time.Sleep(time.Duration(attempt*(10+rand.IntN(40))) * time.Millisecond)
		}
		if err = s.takeOnce(r.Context(), id); err == nil {
			return false
		}
		if !errors.As(err, &he) || !he.busy {
			break
		}
	}
	switch {
	case errors.As(err, &he) && he.busy:
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: codeSessionMoving, Message: "session " + id + " is moving between replicas: " + err.Error() + "; retry"})
	case errors.As(err, &he):
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: codeHistoryUnknown, Message: "session " + id + " is refused rather than decided without its history: " + err.Error()})
	default:
		s.log.WithError(err).WithField("session", id).Error("session not taken")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Error: codeSessionFailed, Message: "session " + id + " could not be taken by this replica: " + err.Error()})
	}
	return true
}

// takeAttempts bounds the tries at a session another replica is busy with.
const takeAttempts = 4

// takeOnce takes session id unless this replica holds it, under the
// session's lock.
func (s *Server) takeOnce(ctx context.Context, id string) error {
	unlock := s.replicas.locks.lock(id, true)
	defer unlock()
	h, err := s.sessions.Holding(id)
	if err != nil || h.Here {
		return err
	}
	if s.drain.leaving.Load() {
		// Stopping: it hands sessions over, never takes one (drain.go).
		return &historyError{busy: true, msg: "this replica is stopping and takes no session"}
	}
	return s.acquire(ctx, id, h)
}

// historyError: the session cannot be taken now (busy) or its history
// cannot be proven (a replica that may hold it does not answer).
type historyError struct {
	busy bool
	msg  string
}

func (e *historyError) Error() string { return e.msg }

func (s *Server) acquire(ctx context.Context, id string, h session.Holding) error {
	rp := s.replicas
	ring := rp.ring.Load()
	if ring == nil {
		return &historyError{msg: "this replica does not know its peers yet"}
	}
	askCtx, cancel := context.WithTimeout(ctx, handoverTimeout)
	defer cancel()
	type reply struct {
		peer string
		ans  handoverAnswer
		err  error
	}
	inRing := map[string]bool{}
	var ask []string
	for _, p := range ring.Peers() {
		if p != rp.self {
			inRing[p] = true
			ask = append(ask, p)
		}
	}
	suspects := map[string]bool{}
	for _, p := range h.Hints {
		suspects[p] = true
	}
	if h.Head.Seq > 0 && h.Head.Holder != "" {
		suspects[h.Head.Holder] = true
	}
	asked := map[string]bool{rp.self: true}
	var unreachable, why []string
	answered := 0 // replicas of the ring that answered
	// Every replica of the ring, then every replica a hint names that is
	// not in it (one removed from the name while it held sessions: it
	// hands them over as it would to a replica added).
	for round := 0; round < 3; round++ {
		for p := range suspects {
			if !asked[p] && !slices.Contains(ask, p) {
				ask = append(ask, p)
			}
		}
		if len(ask) == 0 {
			break
		}
		replies := make([]reply, len(ask))
		var wg sync.WaitGroup
		for i, p := range ask {
			asked[p] = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				ans, err := rp.askHandover(askCtx, p, id)
				replies[i] = reply{peer: p, ans: ans, err: err}
			}()
		}
		wg.Wait()
		ask = nil
		for _, rep := range replies {
			switch {
			case rep.err != nil:
				unreachable = append(unreachable, rep.peer)
				why = append(why, rep.err.Error())
				continue
			case rep.ans.State == handoverHeld:
				if err := s.sessions.Continue(ctx, id, rep.ans.Transfer); err != nil {
					return fmt.Errorf("continue the journal %s sent: %w", rep.peer, err)
				}
				s.log.WithField("session", id).WithField("from", rep.peer).Info("session taken over, journal continued")
				return nil
			case rep.ans.State == handoverBusy:
				return &historyError{busy: true, msg: rep.peer + " is busy with it"}
			}
			if inRing[rep.peer] {
				answered++
			}
			for _, p := range append(rep.ans.Hints, rep.ans.Holder) {
				if p != "" {
					suspects[p] = true
				}
			}
		}
	}
	for p := range suspects {
		if !asked[p] {
			unreachable = append(unreachable, p) // named only in the last round
		}
	}
	delete(suspects, rp.self)
	// An unreachable replica may hold the session if a hint names it, or
	// if too few replicas answered for their hints to tell: the replicas
	// a holder asked before taking it are all that record it.
	quorum := 2*(answered+1) > len(inRing)+1
	var lost []string
	for _, p := range unreachable {
		if suspects[p] || !quorum {
			lost = append(lost, p)
		}
	}
	switch {
	case len(lost) == 0 && h.Head.Seq == 0:
		return s.sessions.Start(ctx, id, session.LinkNew)
	case len(lost) == 0:
		// Handed over from here, and no reachable replica holds it now:
		// its journal since is lost.
		lost = []string{h.Head.Holder}
	}
	if s.set.Sessions.Takeover != config.TakeoverUnlinked {
		return &historyError{msg: fmt.Sprintf("replicas that may hold it do not answer (%v: %s); takeover %q", lost, strings.Join(why, "; "), s.set.Sessions.Takeover)}
	}
	s.log.WithField("session", id).WithField("unreachable", lost).Warn("session continued in an unlinked segment")
	return s.sessions.Start(ctx, id, session.LinkUnlinked)
}

// askHandover asks peer for session id (POST PathPeerHandover).
func (rp *replicas) askHandover(ctx context.Context, peer, id string) (handoverAnswer, error) {
	body, _ := json.Marshal(handoverRequest{Session: id, To: rp.self})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+peer+PathPeerHandover, bytes.NewReader(body))
	if err != nil {
		return handoverAnswer{}, err
	}
	req.Header.Set(HeaderPeerToken, rp.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := rp.client.Do(req)
	if err != nil {
		rp.health.markDown(peer, err)
		return handoverAnswer{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return handoverAnswer{}, fmt.Errorf("%s answered %s: %s", peer, resp.Status, bytes.TrimSpace(msg))
	}
	var ans handoverAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxTransferBody)).Decode(&ans); err != nil {
		return handoverAnswer{}, fmt.Errorf("%s: handover answer: %w", peer, err)
	}
	if ans.State == handoverHeld && ans.Transfer == nil {
		return handoverAnswer{}, fmt.Errorf("%s: a handover without its journal", peer)
	}
	return ans, nil
}
