package blobstore

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// EnvAzureConnectionString, when set, is the connection string of the
// storage account (its AccountName must be the source's account): an
// account key or SAS, and a BlobEndpoint for Azurite or another cloud.
// Unset, the account's public endpoint is reached with
// DefaultAzureCredential (environment, workload identity, managed identity,
// Azure CLI).
const EnvAzureConnectionString = "AZURE_STORAGE_CONNECTION_STRING"

// azblobStore is one container of one storage account.
type azblobStore struct {
	container *container.Client
}

func newAzblob(account, containerName string) (*azblobStore, error) {
	var client *azblob.Client
	if cs := os.Getenv(EnvAzureConnectionString); cs != "" {
		if got := connStringAccount(cs); got != account {
			return nil, fmt.Errorf("%s names storage account %q, the URL %q: refusing to use another account", EnvAzureConnectionString, got, account)
		}
		c, err := azblob.NewClientFromConnectionString(cs, azOptions())
		if err != nil {
			return nil, fmt.Errorf("make Azure Blob client from %s: %w", EnvAzureConnectionString, err)
		}
		client = c
	} else {
		cred, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("find Azure credentials: %w", err)
		}
		c, err := azblob.NewClient("https://"+account+".blob.core.windows.net/", cred, azOptions())
		if err != nil {
			return nil, fmt.Errorf("make Azure Blob client: %w", err)
		}
		client = c
	}
	return &azblobStore{container: client.ServiceClient().NewContainerClient(containerName)}, nil
}

// azOptions retries a few times within seconds (the SDK's default spends
// most of a minute), so that a store that cannot be reached fails the start
// with its own error rather than the deadline's; the watch tries again on
// its next tick.
func azOptions() *azblob.ClientOptions {
	o := &azblob.ClientOptions{}
	o.Retry = policy.RetryOptions{MaxRetries: 2, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 2 * time.Second, TryTimeout: 10 * time.Second}
	return o
}

// connStringAccount is the AccountName of a connection string.
func connStringAccount(cs string) string {
	for _, part := range strings.Split(cs, ";") {
		if k, v, ok := strings.Cut(strings.TrimSpace(part), "="); ok && strings.EqualFold(k, "AccountName") {
			return v
		}
	}
	return ""
}

func (s *azblobStore) Get(ctx context.Context, key string, max int64) ([]byte, string, error) {
	resp, err := s.container.NewBlobClient(key).DownloadStream(ctx, nil)
	if err != nil {
		return nil, "", azErr(err)
	}
	defer resp.Body.Close()
	data, err := readBounded(resp.Body, max)
	if err != nil {
		return nil, "", err
	}
	if resp.ETag == nil {
		return nil, "", fmt.Errorf("download %s: no ETag in the response", key)
	}
	return data, string(*resp.ETag), nil
}

func (s *azblobStore) Version(ctx context.Context, key string) (string, error) {
	p, err := s.container.NewBlobClient(key).GetProperties(ctx, nil)
	if err != nil {
		return "", azErr(err)
	}
	if p.ETag == nil {
		return "", fmt.Errorf("properties of %s: no ETag in the response", key)
	}
	return string(*p.ETag), nil
}

// Create uploads with If-None-Match: *, which Azure answers 409
// BlobAlreadyExists (or 412 ConditionNotMet) when the blob exists.
func (s *azblobStore) Create(ctx context.Context, key string, data []byte) error {
	_, err := s.container.NewBlockBlobClient(key).UploadBuffer(ctx, data, &blockblob.UploadBufferOptions{
		HTTPHeaders:      &blob.HTTPHeaders{BlobContentType: to.Ptr(contentType)},
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: to.Ptr(azcore.ETagAny)}},
	})
	return azErr(err)
}

// List lists the blobs under prefix and leaves out those up to
// startAfter: Azure's listing has no start-after of its own (its marker is
// opaque), so a resume lists the prefix whole.
func (s *azblobStore) List(ctx context.Context, prefix, startAfter string, fn func(string) error) error {
	p := s.container.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: to.Ptr(prefix)})
	for p.More() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return azErr(err)
		}
		for _, b := range page.Segment.BlobItems {
			if name := *b.Name; name > startAfter {
				if err := fn(name); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (s *azblobStore) Dirs(ctx context.Context, prefix string) ([]string, error) {
	p := s.container.NewListBlobsHierarchyPager("/", &container.ListBlobsHierarchyOptions{Prefix: to.Ptr(prefix)})
	var out []string
	for p.More() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, azErr(err)
		}
		for _, bp := range page.Segment.BlobPrefixes {
			out = append(out, dirName(prefix, *bp.Name))
		}
	}
	return out, nil
}

func (s *azblobStore) Close() error { return nil }

func azErr(err error) error {
	if bloberror.HasCode(err, bloberror.BlobNotFound) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	if bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet) {
		return fmt.Errorf("%w: %w", ErrExists, err)
	}
	return err
}
