package main

import (
	"errors"

	"github.com/containernetworking/cni/pkg/types"
)

// gc releases every attachment ADD recorded for this network and pin root
// that the runtime no longer lists in cni.dev/valid-attachments: its
// endpoint entries and its veth's link pin go, then its record.
func (pl plugin) gc(req request) error {
	valid := make(map[types.GCAttachment]bool, len(req.conf.ValidAttachments))
	for _, v := range req.conf.ValidAttachments {
		valid[v] = true
	}
	recs := recordsOf(req.conf)
	all, unreadable := recs.list()
	for _, err := range unreadable {
		pl.log.Warn("attachment record unreadable, skipped", "err", err)
	}
	var errs []error
	for _, r := range all {
		// Another agent's pin root (one data dir, several nodes' worth of
		// namespaces) is not this runtime's to judge.
		if r.BPFFSRoot != req.conf.BPFFSRoot || valid[types.GCAttachment{ContainerID: r.ContainerID, IfName: r.IfName}] {
			continue
		}
		a, err := attachmentOfRecord(r)
		if err == nil {
			err = pl.release(req.conf.BPFFSRoot, a)
		}
		if err == nil {
			err = recs.remove(r.ContainerID, r.IfName)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		pl.log.Info("attachment gone: its endpoints and from_pods removed", "container", r.ContainerID, "ifname", r.IfName, "dev", r.HostVeth)
	}
	return errors.Join(errs...)
}
