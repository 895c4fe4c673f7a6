// Module for the test bed's tiny images: the pod sandbox (pause) and the
// network probe used by check-isolation.sh. Standard library only.
module github.com/tp-run/tp/hack/cluster/images

go 1.24
