package policysource

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// EnvAzureConnectionString, when set, is the connection string of the
// storage account (its AccountName must be the source's account): an
// account key or SAS, and a BlobEndpoint for Azurite or another cloud.
// Unset, the account's public endpoint is reached with
// DefaultAzureCredential (environment, workload identity, managed identity,
// Azure CLI).
const EnvAzureConnectionString = "AZURE_STORAGE_CONNECTION_STRING"

// azblobStore reads one container of one storage account.
type azblobStore struct {
	container *container.Client
}

func newAzblob(account, containerName string) (*azblobStore, error) {
	var client *azblob.Client
	if cs := os.Getenv(EnvAzureConnectionString); cs != "" {
		if got := connStringAccount(cs); got != account {
			return nil, fmt.Errorf("%s names storage account %q, the source %q: refusing to read another account", EnvAzureConnectionString, got, account)
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

func (s *azblobStore) get(ctx context.Context, key string, max int64) ([]byte, string, error) {
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

func (s *azblobStore) version(ctx context.Context, key string) (string, error) {
	p, err := s.container.NewBlobClient(key).GetProperties(ctx, nil)
	if err != nil {
		return "", azErr(err)
	}
	if p.ETag == nil {
		return "", fmt.Errorf("properties of %s: no ETag in the response", key)
	}
	return string(*p.ETag), nil
}

func (s *azblobStore) close() error { return nil }

func azErr(err error) error {
	if bloberror.HasCode(err, bloberror.BlobNotFound) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}
