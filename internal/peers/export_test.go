package peers

import "errors"

// WithoutEvents makes r's Run fail to open its event socket, as when the
// kernel refuses it: Run must then rely on its resync.
func WithoutEvents(r *Reconciler) {
	r.subscribe = func() (subscription, error) {
		return subscription{}, errors.New("event socket refused (test)")
	}
}

// NexthopID is the first ID tried for a peer's nexthop object.
var NexthopID = nexthopID

// NextNexthopID is the IPv6 ID tried after id.
var NextNexthopID = nextNexthopID
