-- What made each forecast: the fitted model, or the lot's partial profile (a lot with
-- fewer days of history than the model needs).
ALTER TABLE lot_forecasts ADD COLUMN IF NOT EXISTS method TEXT NOT NULL DEFAULT 'model';
