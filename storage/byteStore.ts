/**
 * Where a chunked array's bytes live: a key -> bytes map rooted at a folder or an S3 prefix.
 * Keys are zarrita's absolute store paths ('/zarr.json', '/0/c/0/1/2'), relative to the root.
 * The shape matches zarrita's AsyncReadable + AsyncMutable, so a ByteStore can be handed to
 * zarrita directly.
 */

export type RangeQuery = { offset: number; length: number } | { suffixLength: number };

export interface ByteStore {
  /** The root, as the user named it (path or s3:// URL), for messages. */
  readonly url: string;
  /** The object's bytes, or undefined if there is none. */
  get(key: string): Promise<Uint8Array | undefined>;
  /** A byte range of the object (ranged GET on S3), or undefined if there is none. */
  getRange(key: string, range: RangeQuery): Promise<Uint8Array | undefined>;
  /** Stores the object atomically: readers see the old bytes or the new ones, never a mix. */
  set(key: string, value: Uint8Array): Promise<void>;
  delete(key: string): Promise<void>;
  /** Keys under `prefix` (default: all), in '/a/b' form relative to the root. */
  list(prefix?: string): AsyncIterable<string>;
  /**
   * Removes what an interrupted writer left behind and nothing else: temp files of atomic writes
   * on a filesystem, incomplete multipart uploads on S3. Returns how many were removed.
   * `owned` limits it to writes of those keys: other writers (shards) may be busy with the rest.
   */
  cleanUpInterruptedWrites(owned?: (key: string) => boolean): Promise<number>;
  close?(): Promise<void>;
}
