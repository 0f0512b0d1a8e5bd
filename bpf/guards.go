package bpf

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
)

// cgroupNameLen is CGROUP_NAME_LEN in chio.c: NAME_MAX plus the NUL.
const cgroupNameLen = 256

// Guard names a cgroup directory by where it is rather than by its id: the
// cgroup id of its parent directory and its own name. A guarded directory
// that is not protected (a workload's cgroup removed and made again, so that
// its id changed) has its connects and sends refused in the kernel, with an
// EventGuarded, until the agent protects the new id.
type Guard struct {
	ParentID uint64 // cgroup id of the parent directory
	Name     string // the directory's name (one path element)
}

func guardKey(g Guard) (chioGuardKey, error) {
	var k chioGuardKey
	if g.Name == "" || len(g.Name) >= cgroupNameLen {
		return k, fmt.Errorf("guard cgroup %q: name must be 1 to %d bytes", g.Name, cgroupNameLen-1)
	}
	for i := 0; i < len(g.Name); i++ {
		if g.Name[i] == 0 || g.Name[i] == '/' {
			return k, fmt.Errorf("guard cgroup %q: not one path element", g.Name)
		}
	}
	k.ParentId = g.ParentID
	for i := 0; i < len(g.Name); i++ {
		k.Name[i] = int8(g.Name[i])
	}
	return k, nil
}

// SetGuard guards a cgroup path for a workload.
func (o *Objects) SetGuard(g Guard, workloadID uint32) error {
	k, err := guardKey(g)
	if err != nil {
		return err
	}
	if err := o.objs.Guards.Put(&k, workloadID); err != nil {
		return fmt.Errorf("guard cgroup %d/%s: %w", g.ParentID, g.Name, err)
	}
	return o.bumpGeneration()
}

// RemoveGuard stops guarding a cgroup path. A missing guard is not an error.
func (o *Objects) RemoveGuard(g Guard) error {
	k, err := guardKey(g)
	if err != nil {
		return err
	}
	if err := o.objs.Guards.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unguard cgroup %d/%s: %w", g.ParentID, g.Name, err)
	}
	return o.bumpGeneration()
}

// Guards returns the guarded cgroup paths and their workload ids, as pinned
// state shows them to a restarted agent.
func (o *Objects) Guards() (map[Guard]uint32, error) {
	out := map[Guard]uint32{}
	var k chioGuardKey
	var id uint32
	it := o.objs.Guards.Iterate()
	for it.Next(&k, &id) {
		b := make([]byte, 0, len(k.Name))
		for _, c := range k.Name {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		out[Guard{ParentID: k.ParentId, Name: string(b)}] = id
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list guards: %w", err)
	}
	return out, nil
}
