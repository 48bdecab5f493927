package registry

// SetListPage makes r's listings read n keys per request.
func SetListPage(r *Registry, n int) { r.page = n }
